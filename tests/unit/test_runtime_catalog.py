import json
import subprocess
import sys

import pytest

from relmon.errors import ConfigError, ServiceError, StartupTimeout
from relmon.runtime import ManagedProcess, free_port, port_open, wait_until
from schemas.models import CatalogProduct
from streams.catalog import Catalog, load_catalog_file, write_catalog_file


def test_catalog_file_round_trip(tmp_path):
    products = [
        CatalogProduct(product_id=f"p{i}", title=f"Lamp {i}", attributes={"w": "3"})
        for i in range(3)
    ]
    path = tmp_path / "catalog.jsonl"
    write_catalog_file(path, products)
    assert load_catalog_file(path) == products


def test_bad_catalog_line_names_the_line(tmp_path):
    path = tmp_path / "catalog.jsonl"
    path.write_text('{"product_id": "p1", "title": "Lamp"}\n{"product_id": "p2"}\n')
    with pytest.raises(ConfigError, match=r"catalog\.jsonl:2"):
        load_catalog_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_catalog_file(tmp_path / "missing.jsonl")


def test_catalog_put_get_delete():
    catalog = Catalog()
    catalog.put(CatalogProduct(product_id="p", title="Rug"))
    assert catalog.get("p").title == "Rug" and len(catalog) == 1
    catalog.delete("p")
    assert catalog.get("p") is None and len(catalog) == 0


def test_managed_process_ready_and_stop(tmp_path):
    port = free_port()
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    proc = ManagedProcess(
        "http", server, log_path=tmp_path / "http.log", ready=lambda: port_open("127.0.0.1", port)
    )
    with proc:
        assert proc.alive() and port_open("127.0.0.1", port)
    assert not proc.alive()


def test_process_that_dies_early_fails_start_with_its_log(tmp_path):
    proc = ManagedProcess(
        "crash",
        [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
        log_path=tmp_path / "crash.log",
        ready=lambda: False,
        ready_timeout=30,
    )
    with pytest.raises(ServiceError, match="boom"):
        proc.start()


def test_wait_until_times_out():
    with pytest.raises(StartupTimeout, match="never"):
        wait_until(lambda: False, timeout=0.2, interval=0.05, what="never")


def test_settle_heap_freezes_start_up_and_gc_pauses_are_timed():
    # in a child interpreter: the test process's own collector stays as it is
    script = """
import gc, json
from relmon.runtime import GC_THRESHOLDS, GcPauses, settle_heap
before = [[i] for i in range(1000)]
settle_heap()
pauses = GcPauses().install()
after = [[i] for i in range(10)]
tracked = {id(o) for o in gc.get_objects()}
gc.collect()
pauses.uninstall()
gc.collect()
print(json.dumps({
    "thresholds": list(gc.get_threshold()) == list(GC_THRESHOLDS),
    "frozen": gc.get_freeze_count(),
    "before_scanned": any(id(o) in tracked for o in before),
    "after_scanned": all(id(o) in tracked for o in after),
    "gauges": pauses.gauges(),
    "seconds": pauses.seconds,
    "longest_s": pauses.longest_s,
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    got = json.loads(out.stdout)
    assert got["thresholds"] and got["frozen"] >= 1000
    assert not got["before_scanned"] and got["after_scanned"]
    # one full collection timed while installed, none after
    assert got["gauges"]["gc_full_collections"] == 1
    assert 0 < got["longest_s"] <= got["seconds"]
