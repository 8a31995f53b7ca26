"""Each lazy site kind's share of one transformer call's FLOPs, at published model sizes.

Built on the meta device (no weights, nothing downloaded), called once with inputs of a typical
shape, FLOPs counted by torch's FLOP counter. The share is the most that gating a site kind can
save; it decides which sites are worth a gate (docs/diffusers.md, "Which sites are gated").

    python scripts/site_shares.py
"""
import torch
import diffusers

from lazydit.metrics.pipeline_flops import site_shares

# Published configs (the transformer's config.json of each checkpoint), and a typical call:
# image tokens of a 1024 px image (FLUX/SD3: 64x64 latent patches of 2 -> 4096), 480p 81-frame
# video for Wan (21 x 30 x 52 = 32760 tokens), 512 text tokens (SD3: 333 = 77 CLIP + 256 T5).
MODELS = {
    "FLUX.1-dev": (diffusers.FluxTransformer2DModel, dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56)),
        lambda B: dict(hidden_states=torch.randn(B, 4096, 64), encoder_hidden_states=torch.randn(B, 512, 4096),
                       pooled_projections=torch.randn(B, 768), timestep=torch.ones(B), guidance=torch.ones(B),
                       img_ids=torch.zeros(4096, 3), txt_ids=torch.zeros(512, 3))),
    "SD3.5-large": (diffusers.SD3Transformer2DModel, dict(
        sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64, num_attention_heads=38,
        joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=192),
        lambda B: dict(hidden_states=torch.randn(B, 16, 128, 128), encoder_hidden_states=torch.randn(B, 333, 4096),
                       pooled_projections=torch.randn(B, 2048), timestep=torch.ones(B))),
    "Wan2.1-T2V-14B": (diffusers.WanTransformer3DModel, dict(
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, rope_max_seq_len=1024),
        lambda B: dict(hidden_states=torch.randn(B, 16, 21, 60, 104), encoder_hidden_states=torch.randn(B, 512, 4096),
                       timestep=torch.ones(B))),
}


def main():
    print("| model | site kind | share of FLOPs |")
    print("|---|---|---|")
    for name, (cls, config, inputs) in MODELS.items():
        with torch.device("meta"):
            model = cls(**config).eval()
            kw = inputs(1)
        shares = site_shares(model, lambda: model(**kw, return_dict=False))
        for kind, share in shares.items():
            print(f"| {name} | {kind} | {share:.3f} |")
        print(f"| {name} | (not a site) | {1 - sum(shares.values()):.3f} |")


if __name__ == "__main__":
    main()
