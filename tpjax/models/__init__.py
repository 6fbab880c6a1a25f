"""Models: the Flax encoder (BERT, RoBERTa) and classifier heads, the Llama-family decoder,
their configs, HF and GGUF weight import, tokenizers, bf16 matmuls (precision) and
load_pretrained by alias or local directory (pretrained)."""
