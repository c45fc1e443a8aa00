"""Peak memory measurement, and the compile report stating it per pass."""

from __future__ import annotations

import numpy as np

from sparc.measure.memory import PeakMemory, rss_bytes


def test_peak_memory_sees_a_short_lived_allocation():
    with PeakMemory() as peak:
        block = np.ones(200 * 2**20, np.uint8)  # 200 MB, touched, then freed at once
        del block
    assert peak.bytes - peak.start >= 190 * 2**20
    assert rss_bytes() < peak.bytes


def test_peak_memory_of_a_quiet_block_stays_near_the_start():
    with PeakMemory() as peak:
        sum(range(1000))
    assert peak.bytes - peak.start < 50 * 2**20


def test_the_compile_report_states_each_pass_peak_memory(minilm_path, minilm_batches):
    import sparc
    from sparc.passes import NMSparsity

    compiled = sparc.compile(minilm_path, calibration=minilm_batches,
                             recipe=[NMSparsity(n=2, m=4, method="wanda")], latency_rounds=0)
    (entry,) = compiled.report.passes
    assert entry.peak_rss > 100 * 2**20  # MiniLM's weights alone are 90 MB
    assert "peak RSS MB" in compiled.report.to_markdown()
    assert compiled.report.to_dict()["passes"][0]["peak_rss"] == entry.peak_rss


def test_sampling_measures_the_peak_where_the_kernel_mark_cannot_be_reset(monkeypatch, tmp_path):
    import time

    from sparc.measure import memory

    monkeypatch.setattr(memory, "CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    with PeakMemory() as peak:
        block = np.ones(200 * 2**20, np.uint8)
        time.sleep(0.1)  # sampled every 5 ms
        del block
    assert peak._sampler is not None
    assert peak.bytes - peak.start >= 190 * 2**20
