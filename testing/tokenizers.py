"""Tokenizers for the tiny pipelines, built from an in-memory vocabulary (no download).

transformers 5 builds ``CLIPTokenizer`` and ``T5Tokenizer`` from a vocabulary given in memory:
every text tokenizes, each character is (at most) one token.
"""

from __future__ import annotations


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (GPT-2/CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


CLIP_VOCAB_SIZE = 528  # 256 byte chars + 256 end-of-word variants + bos + eos, rounded up to 16
CLIP_BOS, CLIP_EOS = 512, 513
T5_VOCAB_SIZE = 128


def clip_tokenizer(max_length: int = 77):
    """CLIP byte-level BPE tokenizer with a character-level vocabulary (no merges).

    Any text tokenizes (every byte has a token); each character is one token.
    """
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = CLIP_BOS
    vocab["<|endoftext|>"] = CLIP_EOS
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def t5_tokenizer(max_length: int = 512):
    """T5 (Unigram) tokenizer over printable ASCII characters, no sentinel tokens."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(chr(c), -5.0) for c in range(33, 127)]  # 94 printable characters -> 98 pieces
    pieces += [("▁" + chr(c), -3.0) for c in range(ord("a"), ord("z") + 1)]  # word starts: 124
    assert len(pieces) <= T5_VOCAB_SIZE
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
QWEN_VOCAB_SIZE = 272  # 256 byte chars + the special tokens, rounded up to 16
# The Qwen chat format the Qwen-based pipelines (Z-Image, Qwen-Image, HunyuanImage) render prompts with.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer(max_length: int = 512):
    """Qwen2 byte-level BPE tokenizer over the 256 byte characters (no merges), with Qwen's chat
    template and special tokens."""
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_bytes_to_unicode())}
    vocab.update({t: 256 + i for i, t in enumerate(QWEN_SPECIAL)})
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


SPM_VOCAB_SIZE = 160  # specials + "▁" + printable ASCII + word starts, rounded up to 16


def _spm_vocab(specials: tuple[str, ...]) -> dict[str, int]:
    pieces = [*specials, "▁"]
    pieces += [chr(c) for c in range(33, 127)]
    pieces += ["▁" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    assert len(pieces) <= SPM_VOCAB_SIZE
    return {p: i for i, p in enumerate(pieces)}


def llama_tokenizer(max_length: int = 512):
    """LLaMA (SentencePiece-style BPE with "▁" word starts) over printable ASCII, no merges."""
    from transformers import LlamaTokenizer

    vocab = _spm_vocab(("<unk>", "<s>", "</s>"))
    tok = LlamaTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    tok.pad_token = "</s>"
    return tok


def gemma_tokenizer(max_length: int = 512):
    """Gemma (SentencePiece-style BPE) over printable ASCII, with Gemma's special tokens."""
    from transformers import GemmaTokenizer

    vocab = _spm_vocab(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"))
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


#: A chat format for processors whose messages hold lists of parts (Mistral/Pixtral's layout).
PARTS_CHAT_TEMPLATE = (
    "{% for message in messages %}[{{ message['role'] }}]"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{% endfor %}"
)


def pixtral_processor(max_length: int = 512):
    """A PixtralProcessor (FLUX.2 [dev]'s ``tokenizer`` slot): the LLaMA-style tokenizer with
    Pixtral's image tokens and a chat template, and Pixtral's PIL image processor (no torchvision)."""
    from transformers import LlamaTokenizer, PixtralImageProcessorPil, PixtralProcessor

    vocab = _spm_vocab(("<unk>", "<s>", "</s>", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "<pad>"))
    tok = LlamaTokenizer(vocab=vocab, merges=[], model_max_length=max_length, pad_token="<pad>")
    return PixtralProcessor(
        image_processor=PixtralImageProcessorPil(patch_size=16),
        tokenizer=tok,
        patch_size=16,
        spatial_merge_size=2,
        chat_template=PARTS_CHAT_TEMPLATE,
        image_token="[IMG]",
        image_break_token="[IMG_BREAK]",
        image_end_token="[IMG_END]",
    )
