"""Flux-FMNIST's recipe for `pretrain` (`--model Flux-FMNIST`): rectified flow on Fashion-MNIST
latents (pixels through the space-to-depth "VAE", packed as FluxPipeline packs them), conditioned
on a prompt naming the class. The loop, checkpoints, resume check and EMA export are `pretrain`'s.

    x_t = (1 - t) x0 + t noise,   target velocity noise - x0,   t ~ logit-normal(0, 1)

t is also the transformer's `timestep` (FluxPipeline feeds sigma = timesteps / 1000 in [0, 1]).
Logit-normal(0, 1) is SD3's choice: it spends the steps at mid noise, where the flow is hardest.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F

from ..integrations.diffusers import flux_fmnist as ff
from ..integrations.diffusers import flux_fmnist_text as text

# Recipe facts a resumed run must share; they go into the checkpoint's model record.
RECIPE = {"timesteps": "logit_normal(0, 1)", "init": "adaLN-zero", "latents": "pixel_unshuffle(2), packed 2x2"}


def zero_init_modulation(transformer) -> None:
    """adaLN-Zero (as DiT): every block starts as the identity and the output at zero, so early
    training is not fighting random residual branches; diffusers' default init is plain Linear init."""
    for m in transformer.modules():
        if type(m).__name__ in ("AdaLayerNormZero", "AdaLayerNormZeroSingle", "AdaLayerNormContinuous"):
            torch.nn.init.zeros_(m.linear.weight)
            torch.nn.init.zeros_(m.linear.bias)
    torch.nn.init.zeros_(transformer.proj_out.weight)
    torch.nn.init.zeros_(transformer.proj_out.bias)


class FluxRecipe:
    def __init__(self, cfg, model_cfg: ff.FluxFMNISTConfig | None):
        from ..data import load_fashion_mnist
        FluxPipeline = ff._require().FluxPipeline  # an ImportError naming the extra, not a bare traceback
        self.mcfg = model_cfg or ff.FluxFMNISTConfig()
        if not 0.0 <= self.mcfg.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.mcfg.prompt_dropout}")
        images, labels = load_fashion_mnist("train", cfg.data_dir)
        x = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)  # (N, 1, 28, 28) in [-1, 1]
        vae = ff.PixelUnshuffleVAE()
        z = (vae.encode(x).latents - vae.config.shift_factor) * vae.config.scaling_factor  # (N, 4, 14, 14)
        self.z_all = FluxPipeline._pack_latents(z, len(z), 4, 14, 14)  # (N, 49, 16), as the pipeline packs
        self.y_all = torch.from_numpy(labels)
        self.img_ids = FluxPipeline._prepare_latent_image_ids(1, 7, 7, torch.device("cpu"), torch.float32)
        self.txt_ids = torch.zeros(self.mcfg.t5_len, 3)  # FluxPipeline's text_ids: all zeros
        self.clip, self.t5 = text.build_text_encoders(self.mcfg, self.mcfg.encoder_seed)
        self._encode()

    def _encode(self) -> None:
        """Embeddings of every training prompt, once: the encoders are frozen. Row y * K + k is class
        y under template k; the last row is the unconditional prompt."""
        pipe = ff.assemble_pipeline(self.mcfg, None, self.clip, self.t5)
        self.emb, self.pooled = ff.encode_prompts(pipe, text.training_prompts(self.mcfg.templates), self.mcfg.t5_len)

    def model_dict(self) -> dict:
        return {**self.mcfg.to_dict(), "recipe": RECIPE}

    def build(self):
        transformer = ff.build_transformer(self.mcfg)
        zero_init_modulation(transformer)
        return transformer

    def frozen_tensors(self) -> dict:
        # The encoders travel with the checkpoint: a resume then never depends on re-creating them.
        return {**{f"text_encoder.{k}": v.clone() for k, v in self.clip.state_dict().items()},
                **{f"text_encoder_2.{k}": v.clone() for k, v in self.t5.state_dict().items()}}

    def load_frozen(self, tensors: dict) -> None:
        for name, module in (("text_encoder", self.clip), ("text_encoder_2", self.t5)):
            module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
        self._encode()

    def loss(self, model, batch_size: int) -> torch.Tensor:
        k = len(self.mcfg.templates)
        idx = torch.randint(0, len(self.z_all), (batch_size,))
        row = self.y_all[idx] * k + torch.randint(0, k, (batch_size,))  # a random template of the image's class
        row = torch.where(torch.rand(batch_size) < self.mcfg.prompt_dropout, len(self.emb) - 1, row)
        x0 = self.z_all[idx]                                             # (B, 49, 16)
        t = torch.sigmoid(torch.randn(batch_size))                       # (B,) logit-normal(0, 1)
        noise = torch.randn_like(x0)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        v = model(hidden_states=xt, encoder_hidden_states=self.emb[row], pooled_projections=self.pooled[row],
                  timestep=t, img_ids=self.img_ids, txt_ids=self.txt_ids, return_dict=False)[0]
        return F.mse_loss(v, noise - x0)

    def export(self, path: str, weights: dict, cfg) -> None:
        ff.save_flux_fmnist(path, self.mcfg, weights, self.clip, self.t5,
                            {"pretrain": asdict(cfg), "recipe": RECIPE})
