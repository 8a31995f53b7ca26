"""Tiny random diffusers pipelines, one per DiT family, built offline in memory.

Every builder takes a ``seed`` and returns a standard diffusers pipeline whose text encoders, tokenizers, VAE,
transformer and scheduler are built from the classes diffusers and transformers ship, with random weights and
nothing downloaded: the tokenizers are word-level ``tokenizers`` models wrapped in transformers'
``PreTrainedTokenizerFast``. ``pipe(**CALL_KWARGS[name], num_inference_steps=N, generator=g,
output_type="pt" or "latent")`` runs in well under a second on one CPU thread at N=4, and ``CALL_KWARGS`` exercises
each family's own guidance form:

- flux, flux2, hunyuan_video: guidance-distilled, one transformer call per step (embedded guidance scale);
- sd3: classifier-free guidance as one call on a doubled batch, rows ``[uncond, cond]``;
- qwen_image, wan: true CFG, two transformer calls per step, cond first, then uncond.

``FAMILIES[name](seed)`` builds a pipeline, ``CALLS_PER_STEP[name]`` and ``ROWS_PER_CALL[name]`` say how often the
transformer runs and on how many rows with ``CALL_KWARGS[name]`` (one prompt).
"""
import torch

import diffusers
import transformers
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

WORDS = ("a an the of on in with and red blue green cat dog bird sitting running photo painting video image "
         "blurry low quality ugly system user assistant").split()


# The pre-tokenizer split patterns of the real byte-level BPE tokenizers. With them every word of the pipelines'
# prompt templates is one token here, as it is in the real vocabularies, so the templates' hard-coded prefix lengths
# hold: HunyuanVideo's crop_start=95 (Llama 3) and Qwen-Image's prompt_template_encode_start_idx=34 (Qwen2).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _tokenizer(specials, *, pad, unk, bos=None, eos=None, model_max_length=77, chat_template=None,
               padding_side="right", split=None):
    """A word-level fast tokenizer over `specials` + WORDS; `bos`/`eos` are added around each text if given.
    Words are split on whitespace and punctuation, or with the regex `split` (then a word keeps its leading space,
    and the vocabulary has each word with and without it)."""
    vocab = {}
    for w in (*specials, *WORDS, *((" " + w for w in WORDS) if split else ())):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = (pre_tokenizers.Split(Regex(split), "isolated") if split else pre_tokenizers.Whitespace())
    tok.add_special_tokens(list(specials))  # matched whole, before the normalizer and pre-tokenizer
    if bos or eos:
        single = " ".join(([bos] if bos else []) + ["$A"] + ([eos] if eos else []))
        tok.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(t, vocab[t]) for t in (bos, eos) if t])
    kw = dict(tokenizer_object=tok, pad_token=pad, unk_token=unk, model_max_length=model_max_length,
              padding_side=padding_side)
    if bos:
        kw["bos_token"] = bos
    if eos:
        kw["eos_token"] = eos
    if chat_template:
        kw["chat_template"] = chat_template
    return transformers.PreTrainedTokenizerFast(**kw)


# ---- text encoders ---------------------------------------------------------------------------------------------
CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<unk>")


def _clip(seed, hidden=16, projection=None):
    """CLIP tokenizer (77 tokens, bos/eos) and a CLIPTextModel, or CLIPTextModelWithProjection if `projection`."""
    tok = _tokenizer(CLIP_SPECIALS, bos="<|startoftext|>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>",
                     model_max_length=77)
    cfg = transformers.CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                      projection_dim=projection or hidden, bos_token_id=0, eos_token_id=1,
                                      pad_token_id=1)
    torch.manual_seed(seed)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return tok, cls(cfg).eval()


T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def _t5(seed, d_model=32, umt5=False):
    """T5 tokenizer (eos, pad 0) and a one-layer T5EncoderModel (or UMT5EncoderModel)."""
    tok = _tokenizer(T5_SPECIALS, eos="</s>", pad="<pad>", unk="<unk>", model_max_length=512)
    kw = dict(vocab_size=len(tok), d_model=d_model, d_kv=d_model // 2, d_ff=2 * d_model, num_layers=1,
              num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    if umt5:
        return tok, transformers.UMT5EncoderModel(transformers.UMT5Config(**kw)).eval()
    return tok, transformers.T5EncoderModel(transformers.T5Config(**kw)).eval()


def _flow_scheduler(**kw):
    return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **kw)


# FLUX.1-dev's scheduler config: the resolution-dependent shift mu is computed from the image sequence length.
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096)


def _image_vae(scaling_factor, shift_factor):
    """A one-level AutoencoderKL (latent /2, 4 channels) with the family's latent scaling."""
    return diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                   up_block_types=("UpDecoderBlock2D",), layers_per_block=1, latent_channels=4,
                                   norm_num_groups=8, sample_size=16, use_quant_conv=False, use_post_quant_conv=False,
                                   scaling_factor=scaling_factor, shift_factor=shift_factor).eval()


# ---- 1. FLUX.1 -------------------------------------------------------------------------------------------------
def tiny_flux(seed=0, guidance_embeds=True):
    """FluxPipeline: 2 double-stream + 2 single-stream blocks, width 32 (2 heads of 16)."""
    tokenizer, text_encoder = _clip(seed, hidden=16)
    tokenizer_2, text_encoder_2 = _t5(seed + 1, d_model=32)
    torch.manual_seed(seed + 2)
    vae = _image_vae(scaling_factor=0.3611, shift_factor=0.1159)
    torch.manual_seed(seed + 3)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6)).eval()
    return diffusers.FluxPipeline(scheduler=_flow_scheduler(**FLUX_SCHEDULER), vae=vae, text_encoder=text_encoder,
                                  tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                                  transformer=transformer)


# ---- 2. FLUX.2 -------------------------------------------------------------------------------------------------
# Mistral-style chat template: only the user text is rendered (the pipeline's long system message would be all
# <unk> here and, with a short max_sequence_length, would truncate the prompt away).
MISTRAL_CHAT_TEMPLATE = ("<s>{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
                         "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
                         " [/INST]{% endif %}{% endfor %}")


def tiny_flux2(seed=0):
    """Flux2Pipeline: Mistral3ForConditionalGeneration (30 text layers of width 16, so that the pipeline's default
    ``text_encoder_out_layers=(10, 20, 30)`` exists, and a tiny Pixtral tower it never uses), AutoencoderKLFlux2,
    Flux2Transformer2DModel with 2 double + 2 single blocks of width 32."""
    tokenizer = _tokenizer(("<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]"), pad="<pad>", unk="<unk>",
                           model_max_length=512, chat_template=MISTRAL_CHAT_TEMPLATE)
    text_cfg = transformers.MistralConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                          num_hidden_layers=30, num_attention_heads=2, num_key_value_heads=1,
                                          head_dim=8, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                                          pad_token_id=3, sliding_window=None)
    vision_cfg = transformers.PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=32, patch_size=16)
    torch.manual_seed(seed)
    text_encoder = transformers.Mistral3ForConditionalGeneration(transformers.Mistral3Config(
        text_config=text_cfg, vision_config=vision_cfg, image_token_index=len(tokenizer) - 1)).eval()
    torch.manual_seed(seed + 1)
    vae = diffusers.AutoencoderKLFlux2(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                       up_block_types=("UpDecoderBlock2D",), layers_per_block=1, latent_channels=4,
                                       norm_num_groups=8, sample_size=16, mid_block_add_attention=False).eval()
    torch.manual_seed(seed + 2)
    transformer = diffusers.Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * 16, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4)).eval()
    return diffusers.Flux2Pipeline(scheduler=_flow_scheduler(**FLUX_SCHEDULER), vae=vae, text_encoder=text_encoder,
                                   tokenizer=tokenizer, transformer=transformer)


# ---- 3. Stable Diffusion 3 -------------------------------------------------------------------------------------
def tiny_sd3(seed=0):
    """StableDiffusion3Pipeline: 3 joint blocks of width 32 (the last one context_pre_only), two CLIP encoders
    with projections (hidden 16 each, pooled 16 + 16) and a T5 of width 32 (= joint_attention_dim)."""
    tokenizer, text_encoder = _clip(seed, hidden=16, projection=16)
    tokenizer_2, text_encoder_2 = _clip(seed + 1, hidden=16, projection=16)
    tokenizer_3, text_encoder_3 = _t5(seed + 2, d_model=32)
    torch.manual_seed(seed + 3)
    vae = _image_vae(scaling_factor=1.5305, shift_factor=0.0609)
    torch.manual_seed(seed + 4)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32, out_channels=4,
        pos_embed_max_size=16).eval()
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_flow_scheduler(shift=3.0), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3)


# ---- 4. Qwen-Image ---------------------------------------------------------------------------------------------
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>", "<unk>")


def tiny_qwen_image(seed=0):
    """QwenImagePipeline: Qwen2_5_VLForConditionalGeneration (2 text layers of width 32, a 1-layer vision tower it
    never uses), AutoencoderKLQwenImage, QwenImageTransformer2DModel with 2 blocks of width 32.

    The pipeline drops the first ``prompt_template_encode_start_idx`` = 34 hidden states (the system prompt's);
    the tiny tokenizer splits like Qwen2's, so its template prefix is 34 tokens too."""
    tokenizer = _tokenizer(QWEN_SPECIALS, pad="<|endoftext|>", unk="<unk>", model_max_length=2048,
                           split=QWEN2_SPLIT)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text_cfg = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                    bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                    pad_token_id=ids["<|endoftext|>"])
    vision_cfg = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0], window_size=112)
    cfg = transformers.Qwen2_5_VLConfig(text_config=text_cfg, vision_config=vision_cfg,
                                        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                                        vision_start_token_id=ids["<|vision_start|>"],
                                        vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    text_encoder = transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    torch.manual_seed(seed + 1)
    z = 4
    vae = diffusers.AutoencoderKLQwenImage(base_dim=4, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                           temperal_downsample=[False, True, True], latents_mean=[0.0] * z,
                                           latents_std=[1.0] * z).eval()
    torch.manual_seed(seed + 2)
    transformer = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * z, out_channels=z, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 6, 6)).eval()
    return diffusers.QwenImagePipeline(scheduler=_flow_scheduler(**FLUX_SCHEDULER), vae=vae,
                                       text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)


# ---- 5. Wan 2.1 ------------------------------------------------------------------------------------------------
def tiny_wan(seed=0):
    """WanPipeline (text-to-video): UMT5 encoder of width 32, AutoencoderKLWan (8x spatial, 4x temporal),
    WanTransformer3DModel with 2 blocks of width 32, UniPC flow scheduler as Wan 2.1 ships it."""
    tokenizer, text_encoder = _t5(seed, d_model=32, umt5=True)
    torch.manual_seed(seed + 1)
    vae = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                                     latents_std=[1.0] * 4).eval()
    torch.manual_seed(seed + 2)
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32).eval()
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  num_train_timesteps=1000, flow_shift=3.0)
    return diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                                 scheduler=scheduler)


# ---- 6. HunyuanVideo -------------------------------------------------------------------------------------------
LLAMA_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<unk>")


def _llama_tokenizer():
    return _tokenizer(LLAMA_SPECIALS, bos="<|begin_of_text|>", pad="<|end_of_text|>", unk="<unk>",
                      model_max_length=2048, split=LLAMA3_SPLIT)


def tiny_hunyuan_video(seed=0):
    """HunyuanVideoPipeline: LlamaModel (3 layers of width 16; the pipeline reads hidden_states[-3]), CLIPTextModel
    (pooled, width 16), AutoencoderKLHunyuanVideo (8x spatial, 4x temporal), HunyuanVideoTransformer3DModel with
    1 token-refiner block, 2 dual-stream and 2 single-stream blocks of width 32.

    The pipeline crops the first ``prompt_template["crop_start"]`` = 95 tokens (bos + the template's system part);
    the tiny tokenizer splits like Llama 3's, so the default template's prefix is 95 tokens too."""
    tokenizer = _llama_tokenizer()
    torch.manual_seed(seed)
    text_encoder = transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=2048, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    tokenizer_2, text_encoder_2 = _clip(seed + 1, hidden=16)
    torch.manual_seed(seed + 2)
    vae = diffusers.AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=False).eval()
    torch.manual_seed(seed + 3)
    transformer = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6)).eval()
    return diffusers.HunyuanVideoPipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                                          vae=vae, scheduler=_flow_scheduler(shift=7.0), text_encoder_2=text_encoder_2,
                                          tokenizer_2=tokenizer_2)


FAMILIES = {
    "flux": tiny_flux,
    "flux2": tiny_flux2,
    "sd3": tiny_sd3,
    "qwen_image": tiny_qwen_image,
    "wan": tiny_wan,
    "hunyuan_video": tiny_hunyuan_video,
}

CALL_KWARGS = {
    # guidance-distilled: guidance_scale is embedded, one call per step
    "flux": dict(prompt="a red cat", height=16, width=16, guidance_scale=3.5, max_sequence_length=16),
    "flux2": dict(prompt="a red cat", height=16, width=16, guidance_scale=4.0, max_sequence_length=16),
    # CFG on a doubled batch [uncond, cond], one call per step
    "sd3": dict(prompt="a red cat", negative_prompt="blurry", height=16, width=16, guidance_scale=5.0,
                max_sequence_length=16),
    # true CFG: two calls per step (cond, then uncond)
    "qwen_image": dict(prompt="a red cat", negative_prompt="blurry", height=64, width=64, true_cfg_scale=4.0,
                       max_sequence_length=16),
    "wan": dict(prompt="a red cat running", negative_prompt="blurry", height=64, width=64, num_frames=5,
                guidance_scale=5.0, max_sequence_length=16),
    # guidance-distilled (embedded guidance), one call per step
    "hunyuan_video": dict(prompt="a red cat running", height=32, width=32, num_frames=5, guidance_scale=6.0,
                          max_sequence_length=16),
}

# Transformer forward calls per denoising step, and rows per call, for CALL_KWARGS (one prompt).
CALLS_PER_STEP = {"flux": 1, "flux2": 1, "sd3": 1, "qwen_image": 2, "wan": 2, "hunyuan_video": 1}
ROWS_PER_CALL = {"flux": 1, "flux2": 1, "sd3": 2, "qwen_image": 1, "wan": 1, "hunyuan_video": 1}
