import pytest
import torch

from pruning_course.testing import tiny_model
from pruning_course.evaluate import measure_speed


def test_measure_speed_times_the_requested_shapes_and_generates_exactly_new_tokens():
    model, _ = tiny_model("llama")
    lengths = []
    generate = model.generate

    def recording_generate(*args, **kwargs):
        out = generate(*args, **kwargs)
        lengths.append(out.shape)
        return out

    model.generate = recording_generate
    result = measure_speed(model, batch_size=3, prompt_tokens=10, new_tokens=5, repeats=2, warmup=1)
    assert lengths and all(shape == (3, 15) for shape in lengths)
    assert (result.batch_size, result.prompt_tokens, result.new_tokens) == (3, 10, 5)
    assert result.prefill_seconds > 0 and result.generate_seconds > 0
    assert result.prefill_tokens_per_s == pytest.approx(30 / result.prefill_seconds)
    assert result.peak_rss_mb > 0 and result.threads == torch.get_num_threads()
    assert set(result.as_dict()) >= {"prefill_tokens_per_s", "decode_tokens_per_s"}


def test_measure_speed_uses_given_prompts_and_rejects_bad_sizes():
    model, _ = tiny_model("gpt2")
    prompts = torch.randint(0, 100, (2, 7))
    result = measure_speed(model, prompt_ids=prompts, new_tokens=2, repeats=1, warmup=0)
    assert (result.batch_size, result.prompt_tokens) == (2, 7)
    with pytest.raises(ValueError, match="positive"):
        measure_speed(model, new_tokens=0)


def test_measure_speed_on_the_process_clock(monkeypatch):
    """``clock="process"`` reads ``time.process_time`` (here a fake that ticks one second per call)."""
    import itertools

    import pruning_course.evaluate as evaluate

    ticks = itertools.count()
    monkeypatch.setitem(evaluate.CLOCKS, "process", lambda: float(next(ticks)))
    model, _ = tiny_model("llama")
    result = measure_speed(model, batch_size=2, prompt_tokens=4, new_tokens=3, repeats=3, warmup=1, clock="process")
    assert result.clock == "process"
    assert result.prefill_seconds == 1.0 and result.generate_seconds == 1.0
    assert measure_speed(model, new_tokens=1, repeats=1, warmup=0).clock == "wall"
    with pytest.raises(ValueError, match="unknown clock 'cpu'"):
        measure_speed(model, clock="cpu")
