"""tasks.threads: every task's numeric pools at one count, whatever the process inherited.

A Dask nanny starts workers with OMP_NUM_THREADS=1 (and MKL/OpenBLAS); the
local process pool inherits the machine's defaults.  After ``pin`` both have
``NUMERIC_THREADS`` in OpenMP, OpenBLAS and torch, for libraries loaded before
and after the pin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tasks.threads import NUMERIC_THREADS, OPENBLAS_THREADS

PROBE = """
import json, sys
import numpy  # OpenBLAS loaded before the pin
early = sys.argv[1] == "early"
if early:
    import torch
from tasks.threads import pin
pin()
if not early:
    import torch  # loaded after the pin: reads the environment pin set
from threadpoolctl import threadpool_info
print(json.dumps({"pools": [(i["internal_api"], i["num_threads"]) for i in threadpool_info()],
                  "torch": torch.get_num_threads()}))
"""


@pytest.mark.parametrize("torch_loaded", ["early", "late"])
@pytest.mark.parametrize("inherited", ["1", None])
def test_pin_gives_every_pool_the_same_count(torch_loaded, inherited):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                             "OPENBLAS_NUM_THREADS")}
    if inherited:  # what a Dask nanny sets
        env.update(OMP_NUM_THREADS=inherited, MKL_NUM_THREADS=inherited, OPENBLAS_NUM_THREADS=inherited)
    out = subprocess.run([sys.executable, "-c", PROBE, torch_loaded], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__))).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["torch"] == NUMERIC_THREADS
    assert {"openmp", "openblas"} <= {api for api, _ in got["pools"]}, got
    # every copy (torch and CTranslate2 bring their own OpenMP); OpenBLAS alone runs one thread (tasks.threads)
    assert {n for api, n in got["pools"] if api != "openblas"} == {NUMERIC_THREADS}, got
    assert {n for api, n in got["pools"] if api == "openblas"} == {OPENBLAS_THREADS}, got
