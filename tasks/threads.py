"""The thread count of every numeric pool a stage uses, fixed so outputs do not depend on where it runs.

Float reductions split across threads add in a different order, so a model's
output can change with the thread count: Whisper turned a noisy window into
"the" with one thread and a full sentence with two.  A Dask nanny starts its
worker with ``OMP_NUM_THREADS=1`` (and MKL/OpenBLAS), the local process pool
inherits the machine's defaults, and machines differ in cores; without a pin
the same recording gave different transcripts (and everything downstream of
them) on the two runners.  ``pin`` sets the pools of the libraries already
loaded (threadpoolctl: OpenMP, OpenBLAS, MKL; torch) and the environment that
libraries loaded later read (CTranslate2's OpenMP, torch on first import).
"""

from __future__ import annotations

import os
import sys

# Two: what every stage ran with on the 2-core machines the outputs were first made on (so the pin
# changed no stored output there), and base.workers processes each running a few threads stay cheap.
NUMERIC_THREADS = 2
_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# OpenBLAS (numpy's and scipy's, pthreads builds) runs single-threaded: its pool is process-wide and its threads
# busy-wait, and two stage workers once spun 35 minutes in its threaded sgemm (a 80x201 @ 201x4300 mel
# projection in Whisper's feature extractor) on a 2-core machine.  Our numpy matrix products are small, and
# OpenBLAS splits a product by output blocks, so one thread gives the same numbers.
OPENBLAS_THREADS = 1


def pin(n: int = NUMERIC_THREADS) -> None:
    """Fix this process's numeric thread pools at ``n`` (OpenBLAS at ``OPENBLAS_THREADS``; idempotent)."""
    for var in _ENV:
        os.environ[var] = str(n)
    os.environ["OPENBLAS_NUM_THREADS"] = str(OPENBLAS_THREADS)
    from threadpoolctl import ThreadpoolController, threadpool_limits

    threadpool_limits(limits=n)
    ThreadpoolController().select(internal_api="openblas").limit(limits=OPENBLAS_THREADS)
    torch = sys.modules.get("torch")  # imported later, torch reads OMP_NUM_THREADS set above
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
