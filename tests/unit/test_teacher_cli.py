from relmon.cli import build_parser
from relmon.settings import load_settings


def test_teacher_and_export_distill_commands_parse():
    args = build_parser().parse_args(["teacher"])
    assert args.func.__name__ == "_cmd_teacher"
    args = build_parser().parse_args(["export", "distill", "--out", "x.jsonl", "--human-only"])
    assert args.func.__name__ == "_cmd_export_distill"
    assert (args.out, args.human_only) == ("x.jsonl", True)


def test_teacher_settings_defaults_and_secret(monkeypatch):
    monkeypatch.setenv("RELMON_TEACHER_API_KEY", "sk-secret-123")
    s = load_settings()
    assert s.topics.labels == "relmon.teacher-labels"
    assert s.teacher.base_url == "" and s.teacher.concurrency >= 1
    assert s.teacher.api_key.get_secret_value() == "sk-secret-123"
    assert "sk-secret-123" not in repr(s) and "sk-secret-123" not in s.model_dump_json()
