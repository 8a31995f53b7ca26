"""Class accuracy of Flux-FMNIST samples, judged by the shipped Fashion-MNIST classifier.

    python -m lazydit.eval.flux_fmnist RUN/checkpoint.safetensors --n 200 --cfg 1,3 --threads 1

Image i is prompted "a photo of a <class i % 10>" and starts from seed SEED + i (default 2_000_000,
clear of the training RNG and of DiT-FMNIST's evaluation seeds 0..199), one generator per image, so
the result does not depend on the batch size. Reads a pretrain checkpoint (its EMA, debiased as the
export is, so a run can be measured while it trains) or an exported weights file.
"""
from __future__ import annotations

import argparse
import json

import torch

from ..integrations.diffusers import flux_fmnist as ff
from ..integrations.diffusers import flux_fmnist_text as text

EVAL_SEED = 2_000_000


def pipeline_from_checkpoint(path: str, ema: bool = True):
    """(FluxPipeline with the checkpoint's debiased EMA transformer, its step); ema=False: the live
    weights instead (early in a run the EMA still averages over weights far from the current ones)."""
    from safetensors.torch import load_file

    from ..train.checkpoint import read_checkpoint_meta
    from ..train.pretrain import debiased_ema
    from ..train.pretrain_flux import zero_init_modulation
    meta = read_checkpoint_meta(path)
    if meta["config"].get("model") != "Flux-FMNIST":
        raise ValueError(f"{path} is not a Flux-FMNIST checkpoint")
    mcfg = ff.FluxFMNISTConfig.from_dict({k: v for k, v in meta["model"].items() if k != "recipe"})
    tensors = load_file(path)
    # The EMA started at the seeded initial weights: rebuild them as `pretrain` did, to debias.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(meta["config"]["seed"])
        transformer = ff.build_transformer(mcfg)
        zero_init_modulation(transformer)
    init = {k: v.clone() for k, v in transformer.state_dict().items()}
    if ema:
        avg = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        transformer.load_state_dict(debiased_ema(avg, init, meta["config"]["ema_decay"], meta["step"]))
    else:
        transformer.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    clip, t5 = text.build_text_encoders(mcfg, mcfg.encoder_seed)
    for name, module in (("text_encoder", clip), ("text_encoder_2", t5)):
        module.load_state_dict({k[len(name) + 8:]: v for k, v in tensors.items() if k.startswith(f"frozen.{name}.")})
    return ff.assemble_pipeline(mcfg, transformer.eval().requires_grad_(False), clip, t5), meta["step"]


@torch.no_grad()
def class_accuracy(pipe, n: int = 200, cfg_scale: float = 1.0, steps: int = 28, seed: int = EVAL_SEED,
                   batch: int = 50) -> float:
    """Share of n samples (labels i % 10) the shipped classifier assigns to their prompt's class.
    cfg_scale > 1 is true CFG against the empty prompt (two calls per step)."""
    from ..metrics.classifier import load_classifier, predict
    labels = [i % 10 for i in range(n)]
    images = []
    for s in range(0, n, batch):
        ys = labels[s:s + batch]
        out = pipe(prompt=[text.prompt_for(y) for y in ys], negative_prompt=[text.UNCOND] * len(ys),
                   true_cfg_scale=cfg_scale, height=28, width=28, num_inference_steps=steps,
                   max_sequence_length=pipe.tokenizer_2.model_max_length, output_type="pt",
                   generator=[torch.Generator().manual_seed(seed + s + i) for i in range(len(ys))])
        images.append(out.images * 2 - 1)  # [0, 1] -> [-1, 1], the classifier's input range
    pred = predict(load_classifier(), torch.cat(images))
    return (pred == torch.tensor(labels)).float().mean().item()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m lazydit.eval.flux_fmnist", description=__doc__.split("\n")[0])
    p.add_argument("weights", help="a pretrain checkpoint.safetensors (its debiased EMA) or an exported weights file")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--cfg", default="1,3", help="comma-separated true_cfg_scale values (1: no CFG)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--live", action="store_true", help="a checkpoint's live weights instead of its EMA")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from ..train.checkpoint import read_checkpoint_meta
    try:
        read_checkpoint_meta(a.weights)
        is_checkpoint = True
    except ValueError:  # not a training checkpoint: an exported weights file
        is_checkpoint = False
    if a.live and not is_checkpoint:
        raise SystemExit(f"--live needs a training checkpoint; {a.weights} is not one")
    pipe, step = (pipeline_from_checkpoint(a.weights, ema=not a.live) if is_checkpoint
                  else (ff.flux_fmnist_pipeline(a.weights), None))
    pipe.set_progress_bar_config(disable=True)
    for s in (float(v) for v in a.cfg.split(",")):
        acc = class_accuracy(pipe, a.n, s, a.steps, a.seed)
        print(json.dumps({"weights": a.weights, "step": step, "live": a.live, "n": a.n, "true_cfg_scale": s,
                          "steps": a.steps, "seed": a.seed, "class_accuracy": acc}), flush=True)


if __name__ == "__main__":
    main()
