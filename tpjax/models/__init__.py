"""Models: the Flax encoder (BERT, RoBERTa) and classifier heads, the Llama-family decoder, their configs, HF and GGUF weight import and tokenizers."""
