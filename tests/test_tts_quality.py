"""Quality checks: each problem flags or rejects with a reason naming the config key."""

import re

import pytest

from cordflow.tts import tts_config
from cordflow.tts.quality import FLAG, REJECT, check
from cordflow.tts.schema import REASON_RE

Q = tts_config({})["quality"]
TEXT = "What is seven plus five?"  # 24 characters


def m(duration=1.7, speech=1.5, silence=0.1, clip=0.0):
    return {"duration": duration, "speech_duration": speech, "silence_ratio": silence,
            "clip_ratio": clip}


def test_a_normal_clip_is_ok():
    v = check(m(), TEXT, Q)
    assert (v.status, v.flags, v.reason) == ("ok", [], "")


@pytest.mark.parametrize("measured,code,status,key", [
    (m(duration=0.2, speech=0.0, silence=1.0), "empty", "rejected", None),
    (m(duration=31.0, speech=30.8), "too_long", "rejected", "max_duration_s"),
    (m(speech=0.3), "too_fast", "rejected", "min_sec_per_char"),
    (m(speech=7.0, duration=7.2), "too_slow", "flagged", "max_sec_per_char"),
    (m(silence=0.7), "silence", "flagged", "max_silence_ratio"),
    (m(clip=0.01), "clipped", "flagged", "max_clip_ratio"),
])
def test_each_problem_has_its_code_status_and_reason(measured, code, status, key):
    v = check(measured, TEXT, Q)
    assert v.status == status and code in v.flags
    assert (code in REJECT) == (status == "rejected") and (code in FLAG or code in REJECT)
    entry = next(e for e in v.reason.split("; ") if e.startswith(code + ":"))
    assert re.match(REASON_RE, entry)
    if key:
        assert f"tts.quality.{key}" in entry


def test_rejections_win_over_flags_and_every_problem_is_listed():
    v = check(m(duration=40.0, speech=0.3, silence=0.9, clip=0.5), TEXT, Q)
    assert v.status == "rejected"
    assert v.flags == ["too_long", "too_fast", "silence", "clipped"]
    assert [e.split(":")[0] for e in v.reason.split("; ")] == v.flags


def test_an_empty_clip_is_not_also_called_too_fast():
    assert check(m(speech=0.0, silence=1.0), TEXT, Q).flags == ["empty"]


def test_thresholds_come_from_the_config():
    assert check(m(clip=0.01), TEXT, {**Q, "max_clip_ratio": 0.05}).status == "ok"
    assert check(m(), TEXT, {**Q, "max_duration_s": 1.0}).flags == ["too_long"]
