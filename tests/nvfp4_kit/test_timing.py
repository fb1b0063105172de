"""nvfp4_kit.timing on a GPU: graphs replayed in turn keep each call set's own time."""

import pytest
import torch

from nvfp4_kit.timing import graph_time_us, interleaved_graph_times_us


@pytest.mark.gpu
def test_interleaved_graph_times_match_each_set():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    short = [lambda: torch.cuda._sleep(20_000)]  # spin kernels: ~20k and ~80k clock cycles
    long = [lambda: torch.cuda._sleep(80_000)]
    t_short, t_long = interleaved_graph_times_us([short, long], [20, 20], reps=5)
    assert 3.0 < t_long / t_short < 5.0  # set order and launch counts kept apart
    alone = graph_time_us(long, launches=20, reps=5)
    assert abs(alone - t_long) / alone < 0.2
