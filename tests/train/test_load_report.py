"""peftlab's lines for a classifier's load, in place of transformers' table of "MISSING" weights."""

from peftlab.tasks import get_task
from peftlab.train.models import load_report


def test_a_new_head_alone_is_one_line():
    text = load_report("minilm-l6", get_task("sst2"), ("classifier", "bert.pooler"),
                       {"missing_keys": {"classifier.weight", "classifier.bias"}, "unexpected_keys": set(),
                        "mismatched_keys": set()})
    assert text == ("peftlab: minilm-l6 gets a new sst2 head (2 output(s)); classifier, bert.pooler train beside "
                    "the method and are saved with the adapter (newly initialised: classifier.bias, classifier.weight)")


def test_weights_missing_outside_the_head_or_unused_are_named():
    text = load_report("m", get_task("stsb"), ("classifier",),
                       {"missing_keys": {"classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"},
                        "unexpected_keys": {"cls.predictions.bias"},
                        "mismatched_keys": [("classifier.bias", (3,), (1,))]})
    lines = text.splitlines()
    assert lines[0].endswith("(newly initialised: classifier.bias, classifier.weight)")
    assert "lacks 1 other weight(s)" in lines[1] and "bert.encoder.layer.0.attention.self.query.weight" in lines[1]
    assert "1 weight(s) of m's checkpoint are not part of this model: cls.predictions.bias" in lines[2]
