"""Hand-written shapes of the tiny models in ``tests/conftest.py`` (hidden 32, 2 layers, 4 heads,
feed-forward 64; LLaMA has 2 key/value heads of size 8; T5 has 2 encoder and 2 decoder blocks).
Each list holds the (in_features, out_features) of the modules a preset should select."""

H, FF, L = 32, 64, 2

ATTENTION_QV = {
    "bert": [(H, H), (H, H)] * L,
    "t5": [(H, H), (H, H)] * L + [(H, H), (H, H)] * 2 * L,  # encoder self; decoder self + cross
    "llama": [(H, H), (H, 16)] * L,
    "gpt2": [(H, 3 * H)] * L,  # fused q/k/v
}
ATTENTION_KV = {
    "bert": [(H, H), (H, H)] * L,
    "t5": [(H, H), (H, H)] * L + [(H, H), (H, H)] * 2 * L,
    "llama": [(H, 16), (H, 16)] * L,
    "gpt2": [(H, 3 * H)] * L,
}
ATTENTION_OUTPUT = {
    "bert": [(H, H)] * L,
    "t5": [(H, H)] * L + [(H, H)] * 2 * L,
    "llama": [(H, H)] * L,
    "gpt2": [(H, H)] * L,
}
FEED_FORWARD_OUTPUT = {  # the down-projections
    "bert": [(FF, H)] * L,
    "t5": [(FF, H)] * 2 * L,
    "llama": [(FF, H)] * L,
    "gpt2": [(4 * H, H)] * L,  # GPT-2's inner size is 4 x hidden
}
FEED_FORWARD = {
    "bert": [(H, FF), (FF, H)] * L,
    "t5": [(H, FF), (FF, H)] * 2 * L,
    "llama": [(H, FF), (H, FF), (FF, H)] * L,
    "gpt2": [(H, 4 * H), (4 * H, H)] * L,
}
ATTENTION = {
    "bert": [(H, H)] * 4 * L,
    "t5": [(H, H)] * 4 * L + [(H, H)] * 8 * L,
    "llama": [(H, H), (H, 16), (H, 16), (H, H)] * L,
    "gpt2": [(H, 3 * H), (H, H)] * L,
}
ALL_LINEAR = {arch: ATTENTION[arch] + FEED_FORWARD[arch] for arch in ATTENTION}
