"""The toy world's tiny Hugging Face configs: a Llama (the text-only student) and the
LLaVA-NeXT-Video that the QA expert is resized from and the default student is
(`configs/toyworld/distill.py`)."""

# Token ids match `aotd_jax.data.toy_tokenizer`: <pad>=0, <s>=1, </s>=2, <unk>=3, <video>=4,
# <image>=5.
TINY_LLAMA = dict(
  architectures=["LlamaForCausalLM"],
  model_type="llama",
  vocab_size=512,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=256,
  rms_norm_eps=1e-5,
  rope_theta=10000.0,
  tie_word_embeddings=False,
  bos_token_id=1,
  eos_token_id=2,
  pad_token_id=0,
)

TINY_LLAVA = dict(
  architectures=["LlavaNextVideoForConditionalGeneration"],
  model_type="llava_next_video",
  text_config={**{k: v for k, v in TINY_LLAMA.items() if k != "architectures"}},
  vision_config=dict(
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
  ),
  video_token_index=4,
  image_token_index=5,
  spatial_pool_stride=2,
  spatial_pool_mode="average",
  vision_feature_layer=-2,
  vision_feature_select_strategy="default",
  projector_hidden_act="gelu",
  image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]],
  tie_word_embeddings=False,
)
