"""The one tolerance for results computed with different batch shapes, orders or kernel paths.

CPU fp32: MKL/oneDNN pick GEMM kernels, and so summation orders, by matrix shape, so a row
computed in a batch of another composition (other rows, other padding, an edit applied to other
rows) agrees with itself to float rounding, not bit for bit, and by how much depends on the CPU:
measured ≤ 3e-7 on logits of size ~1 here (tests/test_patching.py), 1.2e-7 on another machine of
this kind (issue 16, 4b), ≤ 1e-6 relative on activations (README, "Places"). Exact equality
(`torch.equal`, rtol = atol = 0) is kept for the very same computation run twice: an identity
edit, a rerun, a cache, a round trip through a file.
"""

from __future__ import annotations

BATCHED = {"rtol": 1e-5, "atol": 1e-5}
"""`torch.testing.assert_close(a, b, **BATCHED)` between batched and one-at-a-time results."""
