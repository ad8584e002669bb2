"""The pipeline's measured bubble times what the device does: on a GPU with CUDA events
(the host's clock around a kernel launch measures the launch), on the CPU with the host clock."""
import time

import pytest
import torch

from parallel.pipeline.executor import Spans


def test_cpu_spans_add_up_inside_the_wall_time():
    spans = Spans(torch.device("cpu"))
    for _ in range(2):
        begun = spans.begin()
        time.sleep(0.05)
        spans.end(begun)
    time.sleep(0.05)
    busy, wall = spans.finish()
    assert 0.09 <= busy <= wall
    assert wall >= busy + 0.04


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_spans_measure_the_kernels_not_the_launch():
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    spans = Spans(torch.device("cuda"))
    host = time.perf_counter()
    begun = spans.begin()
    for _ in range(20):
        x = (x @ x).clamp_(-1, 1)
    spans.end(begun)
    host = time.perf_counter() - host  # launches only: the GPU is still busy
    busy, wall = spans.finish()
    # 20 x 1.1 TFLOP: tens of ms on a Hopper card, far more than queuing 40 launches takes
    assert busy > 5 * host and busy > 0.01, (busy, host)
    assert busy <= wall
