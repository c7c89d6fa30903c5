"""`dllm serve` under load and `dllm code` cold vs warm, measured the way docs/serve.md reports
them (dllm_cli/serve/measure.py; loopback only):

- 16 concurrent clients x 8 requests each against one server: none lost, none mixed up (each
  answer equals the sequential run with the same seed), resident memory flat;
- `dllm code` with the model loaded in the process vs served warm: the same diff, the warm run
  reaches its first frame and its end sooner (ratios from runs in the same test).
"""

from __future__ import annotations

import pytest

from dllm_cli.serve import measure


@pytest.mark.slow
def test_16_clients_x_8_requests_none_lost_none_mixed_up_memory_flat():
    result = measure.load(clients=16, requests=8)
    assert (result["answers"], result["lost"], result["mismatched"]) == (128, 0, 0), result
    assert result["distinct_answers"] >= 8, result  # answers differ enough that a mix-up would show
    assert result["rss_growth_mib"] < 16, result


@pytest.mark.slow
def test_warm_dllm_code_beats_a_cold_one_with_the_same_diff():
    result = measure.speed(runs=3)
    assert result["same_diff"], result
    assert result["first_frame_ratio"] > 1.0 and result["total_ratio"] > 1.0, result
