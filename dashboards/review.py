"""Dashboard pages of the teacher-review loop: the review queue and the agreement section.

``render()`` is the "Review queue" page: cases by priority, the pair, the student's score, the
teacher's verdict with its rationale, and a form where a person records a grade (stored in
``verdicts`` as judge ``human``). ``render_agreement()`` compares the student with the teacher and
with people (confusion matrices, precision of the bad-case flag, agreement over time) and shows
the bias-corrected bad-case rate per segment beside the raw student rate
(:mod:`relmon.teacher.agreement`). Both read the store through clickhouse-connect.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st
from clickhouse_connect.driver.client import Client
from kafka import KafkaProducer
from kafka.errors import KafkaError

from relmon import db
from relmon.errors import RelmonError
from relmon.kafka import producer
from relmon.settings import get_settings
from relmon.teacher import agreement, store
from relmon.teacher.verdict import GRADES, Verdict

__all__ = ["render", "render_agreement"]


@st.cache_resource
def _client() -> Client:
    return db.connect(get_settings())


@st.cache_data(ttl=5)
def _queue(pending_only: bool) -> pd.DataFrame:
    return store.queue_frame(_client(), pending_only=pending_only, limit=500)


@st.cache_data(ttl=10)
def _verdicts(days: int) -> pd.DataFrame:
    return store.verdict_frame(_client(), since=datetime.now(UTC) - timedelta(days=days))


@st.cache_data(ttl=10)
def _corrected(segment: store.Segment, days: int) -> pd.DataFrame:
    since = datetime.now(UTC) - timedelta(days=days)
    sums = store.student_sums(_client(), segment, since)
    cases = store.reviewed_cases(_client(), segment, since)
    if sums.empty:
        return pd.DataFrame()
    return agreement.corrected_rates(sums, cases)


def _label(row: pd.Series) -> str:
    # unique per case: Streamlit maps a selectbox's shown label back to its option
    return (
        f"{row['priority']:.2f} · {row['reason']} · {row['query']} → {row['title']} "
        f"[{row['impression_id']}]"
    )


def _save_grade(impression_id: str, reviewer: str, grade: str) -> tuple[str | None, str | None]:
    """Store a person's grade, then send it to the labels topic like a teacher verdict.

    Returns (error: nothing stored, warning: stored but not sent).
    """
    request = store.queue_request(_client(), impression_id)
    if request is None:
        return f"case {impression_id} is no longer in the queue", None
    verdict = Verdict.of(request, judge="human", judge_id=reviewer, grade=grade)  # type: ignore[arg-type]
    store.insert_verdicts(_client(), [verdict])
    return None, _publish(verdict)


@st.cache_resource
def _labels_producer() -> KafkaProducer:
    return producer(get_settings(), max_block_ms=5000)


def _publish(verdict: Verdict) -> str | None:
    """Send a verdict to the labels topic; return a warning if Kafka cannot take it."""
    settings = get_settings()
    try:
        _labels_producer().send(
            settings.topics.labels, key=verdict.impression_id.encode(), value=verdict.to_bytes()
        ).get(10)
    except (KafkaError, RelmonError) as exc:
        return f"grade stored, but not sent to {settings.topics.labels}: {exc}"
    return None


def render() -> None:
    """The review queue page."""
    st.header("Review queue")
    show_all = st.checkbox("include cases people graded already", value=False)
    try:
        queue = _queue(not show_all)
    except RelmonError as exc:
        st.error(str(exc))
        return
    if queue.empty:
        st.info(
            "The review queue is empty: `relmon teacher` fills it from the review topic "
            "(with or without an LLM judge configured)."
        )
        return
    st.caption(f"{len(queue)} cases, highest priority first")
    st.dataframe(
        queue[["priority", "reason", "query", "title", "score", "teacher_grade", "category"]],
        hide_index=True,
    )
    labels = {row["impression_id"]: _label(row) for _, row in queue.iterrows()}
    picked = st.selectbox("case", options=list(labels), format_func=labels.__getitem__)
    case = queue.set_index("impression_id").loc[picked]
    left, right = st.columns(2)
    with left:
        st.subheader("Pair")
        st.markdown(f"**Query:** {case['query']}")
        st.markdown(f"**Product:** {case['title']}")
        st.caption(f"category {case['category'] or '-'} · tier {case['tier']} · {case['locale']}")
        st.metric(
            "student score",
            f"{case['score']:.3f}",
            delta=f"{case['score'] - case['threshold']:+.3f} vs threshold",
        )
    with right:
        st.subheader("Teacher")
        if pd.isna(case["teacher_grade"]) or not case["teacher_grade"]:
            st.write("no teacher verdict yet")
        else:
            st.markdown(f"**{case['teacher_grade']}** ({case['teacher']})")
            st.write(case["teacher_rationale"])
    with st.form("grade"):
        reviewer = st.text_input("your name", value=st.session_state.get("reviewer", ""))
        grade = st.radio("grade", GRADES, horizontal=True, index=None)
        submitted = st.form_submit_button("Save grade")
    if submitted:
        if not reviewer.strip():
            st.error("enter your name first")
        elif grade is None:
            st.error("choose a grade")
        else:
            st.session_state["reviewer"] = reviewer.strip()
            error, warning = _save_grade(str(picked), reviewer.strip(), grade)
            if error:
                st.error(error)
            else:
                _queue.clear()
                _verdicts.clear()
                st.success(f"saved: {grade} by {reviewer.strip()}")
                if warning:
                    st.warning(warning)


def _matrix(title: str, table: pd.DataFrame) -> None:
    st.markdown(f"**{title}**")
    st.dataframe(table)


def render_agreement() -> None:
    """Agreement of student, teacher and people, and the bias-corrected bad-case rate."""
    st.header("Agreement")
    days = st.selectbox("period", [1, 7, 30], index=1, format_func=lambda d: f"last {d} days")
    try:
        verdicts = _verdicts(days)
    except RelmonError as exc:
        st.error(str(exc))
        return
    if verdicts.empty:
        st.info("No verdicts yet: run `relmon teacher` or grade cases in the review queue.")
        return
    teacher = verdicts[verdicts["judge"] == "teacher"]
    human = verdicts[verdicts["judge"] == "human"]
    cols = st.columns(3)
    cols[0].metric("teacher verdicts", len(teacher))
    cols[1].metric("human verdicts", len(human))
    ref = agreement.reference_verdicts(verdicts)
    precision = agreement.flag_precision(ref)
    cols[2].metric(
        "precision of the bad-case flag", "-" if pd.isna(precision) else f"{precision:.1%}"
    )
    left, right = st.columns(2)
    with left:
        if not teacher.empty:
            _matrix("student vs teacher", agreement.confusion(teacher))
    with right:
        if not human.empty:
            _matrix("student vs people", agreement.confusion(human))
    if not teacher.empty and not human.empty:
        both = human.merge(
            teacher[["impression_id", "grade"]].rename(columns={"grade": "teacher_grade"}),
            on="impression_id",
        )
        if not both.empty:
            table = pd.crosstab(both["teacher_grade"], both["grade"])
            _matrix("teacher (rows) vs people (columns)", table)
    st.subheader("Agreement with the student over time")
    over = agreement.agreement_over_time(verdicts, "1h" if days <= 1 else "1D")
    st.dataframe(over, hide_index=True)
    st.subheader("Bias-corrected bad-case rate")
    st.caption(
        "Rogan-Gladen correction with the student's confusion matrix estimated from the review "
        "and audit samples (weights: sample weight x review weight); 95% delta-method interval."
    )
    segments: list[store.Segment] = ["all", "category", "tier", "locale"]
    segment = st.selectbox("segment", segments, index=1)
    rates = _corrected(segment, days)
    if rates.empty:
        st.info("No scored rows in this period.")
        return
    st.dataframe(rates, hide_index=True)
