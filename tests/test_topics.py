"""Topic patterns: compiling, the MQTT subscription filter, and parsing into tags."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest._topics import TopicError, TopicInfo, TopicPattern
from urbanpulse._schema import Kind

DEFAULT = "urbanpulse/{city}/{district}/{kind}/{sensor_id}"
TOPIC_REASONS = ("topic_mismatch", "topic_reserved", "topic_bad_segment", "topic_unknown_kind")


@pytest.fixture(scope="module")
def default() -> TopicPattern:
    return TopicPattern.compile(DEFAULT)


def parse_error(pattern: TopicPattern, topic: str) -> TopicError:
    with pytest.raises(TopicError) as info:
        pattern.parse(topic)
    return info.value


def parse_or_error(pattern: TopicPattern, topic: str) -> TopicInfo | TopicError:
    try:
        return pattern.parse(topic)
    except TopicError as exc:
        return exc


# -- the default pattern ---------------------------------------------------------------


def test_default_pattern_parses_air_topic(default: TopicPattern) -> None:
    info = default.parse("urbanpulse/jakarta/south/air/aq-001")
    assert info == TopicInfo(city="jakarta", district="south", kind=Kind.AIR, sensor_id="aq-001")
    assert type(info.kind) is Kind


def test_default_pattern_parses_traffic_topic(default: TopicPattern) -> None:
    info = default.parse("urbanpulse/bandung/coblong/traffic/tf_7.lane-x")
    assert info.city == "bandung"
    assert info.district == "coblong"
    assert info.kind is Kind.TRAFFIC
    assert info.sensor_id == "tf_7.lane-x"


def test_tags_may_hold_spaces_unicode_and_inner_underscores(default: TopicPattern) -> None:
    info = default.parse("urbanpulse/São Paulo/Jardim_América/air/sensör 1")
    assert (info.city, info.district, info.sensor_id) == ("São Paulo", "Jardim_América", "sensör 1")


def test_default_subscription_filter(default: TopicPattern) -> None:
    assert default.subscription == "urbanpulse/+/+/+/+"


def test_compiled_pattern_structure(default: TopicPattern) -> None:
    assert default.pattern == DEFAULT
    assert default.levels == ("urbanpulse", None, None, None, None)
    assert default.captures == ((1, "city"), (2, "district"), (3, "kind"), (4, "sensor_id"))


def test_parse_is_pure(default: TopicPattern) -> None:
    topic = "urbanpulse/jakarta/south/air/aq-001"
    assert default.parse(topic) == default.parse(topic)
    assert hash(default.parse(topic)) == hash(default.parse(topic))


def test_segment_of_exactly_128_chars_is_accepted(default: TopicPattern) -> None:
    sensor = "s" * 128
    assert default.parse(f"urbanpulse/jakarta/south/air/{sensor}").sensor_id == sensor


# -- custom patterns ---------------------------------------------------------------------


def test_custom_pattern_with_literals_in_between() -> None:
    pattern = TopicPattern.compile("city/{city}/area/{district}/sensors/{kind}/{sensor_id}/data")
    assert pattern.subscription == "city/+/area/+/sensors/+/+/data"
    info = pattern.parse("city/surabaya/area/gubeng/sensors/traffic/t9/data")
    assert info == TopicInfo("surabaya", "gubeng", Kind.TRAFFIC, "t9")
    err = parse_error(pattern, "city/surabaya/zone/gubeng/sensors/traffic/t9/data")
    assert err.reason == "topic_mismatch"
    assert "'area'" in err.detail
    assert "'zone'" in err.detail


def test_custom_pattern_with_ignored_levels() -> None:
    pattern = TopicPattern.compile("{_}/v1/{sensor_id}/{_}/{kind}/{district}/{city}")
    assert pattern.subscription == "+/v1/+/+/+/+/+"
    assert pattern.levels == (None, "v1", None, None, None, None, None)
    assert [name for _, name in pattern.captures] == ["sensor_id", "kind", "district", "city"]
    info = pattern.parse("tenant-a/v1/s-42/anything goes/air/menteng/jakarta")
    assert info == TopicInfo("jakarta", "menteng", Kind.AIR, "s-42")


def test_ignored_level_content_does_not_change_tags() -> None:
    pattern = TopicPattern.compile("{_}/{city}/{district}/{kind}/{sensor_id}")
    a = pattern.parse("gateway-1/jakarta/south/air/s1")
    b = pattern.parse("gateway-2/jakarta/south/air/s1")
    assert a == b


def test_extra_named_capture_is_allowed_and_checked() -> None:
    pattern = TopicPattern.compile("{region}/{city}/{district}/{kind}/{sensor_id}")
    assert pattern.subscription == "+/+/+/+/+"
    assert pattern.parse("java/jakarta/south/air/s1") == TopicInfo(
        "jakarta", "south", Kind.AIR, "s1"
    )
    assert parse_error(pattern, "_internal/jakarta/south/air/s1").reason == "topic_reserved"


def test_single_level_pattern_literal_only_prefix() -> None:
    pattern = TopicPattern.compile("{kind}/{sensor_id}/{district}/{city}")
    assert pattern.subscription == "+/+/+/+"
    assert pattern.parse("traffic/t1/d/c") == TopicInfo("c", "d", Kind.TRAFFIC, "t1")


# -- compile errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        pytest.param("urbanpulse/{city}/{district}/{kind}", r"lacks \{sensor_id\}", id="no-sensor"),
        pytest.param(
            "urbanpulse/{city}/{kind}/{sensor_id}", r"lacks \{district\}", id="no-district"
        ),
        pytest.param(
            "urbanpulse/{district}/{kind}/{sensor_id}/{_}", r"lacks \{city\}", id="no-city-ignored"
        ),
        pytest.param(
            "urbanpulse/{city}/{district}/air/{sensor_id}", r"lacks \{kind\}", id="kind-as-literal"
        ),
        pytest.param(
            "urbanpulse/{city}", r"lacks \{district\}, \{kind\}, \{sensor_id\}", id="many"
        ),
        pytest.param(
            "{city}/{city}/{district}/{kind}/{sensor_id}", r"captures \['city'\] twice", id="dup"
        ),
        pytest.param(
            "{kind}/{city}/{district}/{kind}/{sensor_id}/{sensor_id}",
            r"captures \['kind', 'sensor_id'\] twice",
            id="two-dups",
        ),
        pytest.param(
            "urbanpulse/+/{city}/{district}/{kind}/{sensor_id}", r"level 2 \('\+'\)", id="+"
        ),
        pytest.param(
            "urbanpulse/{city}/{district}/{kind}/{sensor_id}/#", r"level 6 \('#'\)", id="#"
        ),
        pytest.param("urbanpulse/{city}/{district}/{kind}/s+1/{sensor_id}", r"level 5", id="in+"),
        pytest.param(
            "urbanpulse//{city}/{district}/{kind}/{sensor_id}", r"level 2 \(''\)", id="//"
        ),
        pytest.param("/{city}/{district}/{kind}/{sensor_id}", r"level 1 \(''\)", id="leading/"),
        pytest.param("{city}/{district}/{kind}/{sensor_id}/", r"level 5 \(''\)", id="trailing/"),
        pytest.param("", r"level 1 \(''\)", id="empty"),
        pytest.param("urbanpulse/{City}/{district}/{kind}/{sensor_id}", r"level 2", id="upper"),
        pytest.param("urbanpulse/{city/{district}/{kind}/{sensor_id}", r"level 2", id="unclosed"),
        pytest.param("urbanpulse/x{city}/{district}/{kind}/{sensor_id}", r"level 2", id="prefix"),
        pytest.param("urbanpulse/{}/{city}/{district}/{kind}/{sensor_id}", r"level 2", id="{}"),
        pytest.param(
            "urbanpulse/{1x}/{city}/{district}/{kind}/{sensor_id}", r"level 2", id="digit"
        ),
    ],
)
def test_compile_errors_name_the_problem(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        TopicPattern.compile(pattern)
    assert not isinstance(info.value, TopicError)
    assert repr(pattern) in str(info.value)


def test_level_error_explains_what_a_level_may_be() -> None:
    with pytest.raises(ValueError, match=r"must be a literal, '\{name\}' or '\{_\}'"):
        TopicPattern.compile("urbanpulse/+/{city}/{district}/{kind}/{sensor_id}")


def test_ignored_level_is_not_a_capture() -> None:
    # ``{_}`` may repeat (it is not a named capture) and never satisfies a required one.
    pattern = TopicPattern.compile("{_}/{_}/{city}/{district}/{kind}/{sensor_id}")
    assert pattern.subscription == "+/+/+/+/+/+"
    with pytest.raises(ValueError, match=r"lacks \{sensor_id\}"):
        TopicPattern.compile("{city}/{district}/{kind}/{_}")


# -- parse errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        # wrong depth
        pytest.param("urbanpulse/jakarta/south/air", "topic_mismatch", id="too-short"),
        pytest.param("urbanpulse/jakarta/south/air/s1/extra", "topic_mismatch", id="too-deep"),
        pytest.param("urbanpulse/jakarta/south/air/s1/", "topic_mismatch", id="trailing-slash"),
        pytest.param("/urbanpulse/jakarta/south/air/s1", "topic_mismatch", id="leading-slash"),
        pytest.param("", "topic_mismatch", id="empty-topic"),
        pytest.param("urbanpulse", "topic_mismatch", id="prefix-only"),
        # wrong literal
        pytest.param("urbanpulsex/jakarta/south/air/s1", "topic_mismatch", id="literal"),
        pytest.param("UrbanPulse/jakarta/south/air/s1", "topic_mismatch", id="literal-case"),
        pytest.param("sensors/jakarta/south/air/s1", "topic_mismatch", id="other-prefix"),
        # depth is checked before reservation: a deeper dead-letter topic is a mismatch
        pytest.param(
            "urbanpulse/_deadletter/urbanpulse/jakarta/south/air/s1",
            "topic_mismatch",
            id="deadletter-deep",
        ),
        # reserved segments (our own topics), in every captured position
        pytest.param("urbanpulse/_deadletter/south/air/s1", "topic_reserved", id="deadletter"),
        pytest.param("urbanpulse/_alerts/south/air/s1", "topic_reserved", id="alerts"),
        pytest.param("urbanpulse/jakarta/_south/air/s1", "topic_reserved", id="district"),
        pytest.param("urbanpulse/jakarta/south/_air/s1", "topic_reserved", id="kind"),
        pytest.param("urbanpulse/jakarta/south/air/_s1", "topic_reserved", id="sensor"),
        pytest.param("urbanpulse/_/south/air/s1", "topic_reserved", id="bare-underscore"),
        # unknown kinds
        pytest.param("urbanpulse/jakarta/south/water/s1", "topic_unknown_kind", id="water"),
        pytest.param("urbanpulse/jakarta/south/airq/s1", "topic_unknown_kind", id="airq"),
        pytest.param("urbanpulse/jakarta/south/ai r/s1", "topic_unknown_kind", id="space"),
        # bad segments
        pytest.param("urbanpulse/jakarta/south/air/s\x001", "topic_bad_segment", id="nul"),
        pytest.param("urbanpulse/jakarta/south\n/air/s1", "topic_bad_segment", id="newline"),
        pytest.param("urbanpulse/jak\tarta/south/air/s1", "topic_bad_segment", id="tab"),
        pytest.param("urbanpulse/jakarta/south/air/s\x7f", "topic_bad_segment", id="del"),
        pytest.param("urbanpulse/jakarta/south/air/s\u200b1", "topic_bad_segment", id="zwsp"),
        pytest.param("urbanpulse/jakarta/south/air/" + "s" * 129, "topic_bad_segment", id="129"),
        pytest.param("urbanpulse//south/air/s1", "topic_bad_segment", id="empty-city"),
        pytest.param("urbanpulse/jakarta//air/s1", "topic_bad_segment", id="empty-district"),
        pytest.param("urbanpulse/jakarta/south//s1", "topic_bad_segment", id="empty-kind"),
        pytest.param("urbanpulse/jakarta/south/air/", "topic_bad_segment", id="empty-sensor"),
    ],
)
def test_parse_errors_have_machine_readable_reasons(
    default: TopicPattern, topic: str, reason: str
) -> None:
    err = parse_error(default, topic)
    assert err.reason == reason
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"{reason}: ")
    assert err.detail
    assert str(err) == f"{reason}: {err.detail}"


def test_mismatch_detail_names_depths(default: TopicPattern) -> None:
    err = parse_error(default, "urbanpulse/jakarta/south/air")
    assert "4 levels" in err.detail
    assert "has 5" in err.detail


def test_reserved_detail_names_the_capture(default: TopicPattern) -> None:
    err = parse_error(default, "urbanpulse/_deadletter/south/air/s1")
    assert "city" in err.detail
    assert "'_deadletter'" in err.detail


def test_unknown_kind_detail_names_the_kind(default: TopicPattern) -> None:
    err = parse_error(default, "urbanpulse/jakarta/south/water/s1")
    assert "'water'" in err.detail


def test_topic_error_carries_reason_and_detail() -> None:
    err = TopicError("topic_mismatch", "some detail")
    assert err.reason == "topic_mismatch"
    assert err.detail == "some detail"
    assert str(err) == "topic_mismatch: some detail"
    assert isinstance(err, ValueError)


# -- properties ------------------------------------------------------------------------

_TAG = st.text(
    alphabet=st.characters(blacklist_characters="/+#", blacklist_categories=("Cc", "Cs")),
    min_size=1,
    max_size=40,
).filter(lambda s: s.isprintable() and not s.startswith("_"))


@settings(max_examples=200, deadline=None)
@given(
    city=_TAG,
    district=_TAG,
    kind=st.sampled_from(list(Kind)),
    sensor_id=_TAG,
)
def test_round_trip_of_valid_tags(city: str, district: str, kind: Kind, sensor_id: str) -> None:
    pattern = TopicPattern.compile(DEFAULT)
    topic = f"urbanpulse/{city}/{district}/{kind.label}/{sensor_id}"
    assert pattern.parse(topic) == TopicInfo(city, district, kind, sensor_id)


@settings(max_examples=200, deadline=None)
@given(
    topic=st.one_of(
        st.text(max_size=80),
        st.lists(
            st.one_of(
                st.sampled_from(["urbanpulse", "air", "traffic", "_deadletter", "", "+", "#"]),
                st.text(max_size=10),
            ),
            max_size=7,
        ).map("/".join),
    )
)
def test_parse_only_ever_raises_topic_error(topic: str) -> None:
    pattern = TopicPattern.compile(DEFAULT)
    result = parse_or_error(pattern, topic)
    if isinstance(result, TopicError):
        assert result.reason in TOPIC_REASONS
    else:
        info = result
        parts = topic.split("/")
        assert parts[0] == "urbanpulse"
        assert len(parts) == 5
        assert [info.city, info.district, info.sensor_id] == [parts[1], parts[2], parts[4]]
        assert info.kind is Kind.parse(parts[3])
        for tag in (info.city, info.district, info.sensor_id):
            assert tag
            assert tag.isprintable()
            assert not tag.startswith("_")
            assert len(tag) <= 128


# -- regressions: bugs these tests found, now fixed --------------------------------


def test_reserved_segment_in_ignored_level_never_parses_as_sensor() -> None:
    pattern = TopicPattern.compile("urbanpulse/{_}/{city}/{district}/{kind}/{sensor_id}")
    assert pattern.parse("urbanpulse/v1/jakarta/south/air/s1").sensor_id == "s1"
    err = parse_error(pattern, "urbanpulse/_deadletter/jakarta/south/air/s1")
    assert err.reason == "topic_reserved"


@pytest.mark.parametrize("sensor", ["s+1", "s#1", "+", "#"])
def test_wildcards_are_not_accepted_as_tag_values(default: TopicPattern, sensor: str) -> None:
    err = parse_error(default, f"urbanpulse/jakarta/south/air/{sensor}")
    assert err.reason == "topic_bad_segment"
