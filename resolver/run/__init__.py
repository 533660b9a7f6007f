"""What happens to loaded modules: the runtime context, blocks and Cancel, compile, LoRA, sampling."""
