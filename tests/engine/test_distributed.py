"""DistributedDataParallel through torchrun: 2 CPU processes (gloo) end with identical weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent('''
    import os, sys
    import torch
    from torch import nn
    from safetensors.torch import save_file
    from rcnn_cli.engine import TrainConfig, train
    from rcnn_cli.device import seed_everything
    from rcnn_cli.models.fast_rcnn import FastRCNN, FastRCNNConfig

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 6
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            img = torch.rand(3, 48, 64, generator=g)
            x = 4.0 + 4 * i
            return img, {"boxes": torch.tensor([[x, 8.0, x + 24, 40.0]]), "labels": torch.tensor([1 + i % 2]),
                         "image_id": str(i), "proposals": torch.tensor([[x + 2, 6.0, x + 26, 38.0], [0.0, 0.0, 30.0, 30.0],
                                                                         [30.0, 10.0, 60.0, 45.0]])}

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    seed_everything(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=4, padding=1))
    cfg = FastRCNNConfig(classes=["a", "b"], representation_size=32, rois_per_image=8, min_size=48, max_size=64)
    model = FastRCNN(trunk, 8, 16, cfg, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    summary = train(model, Data(), out, TrainConfig(epochs=2, lr=0.02, warmup_iters=2, batch_size=1, progress=False,
                                                    log_every=1), model_config=cfg.to_dict())
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
              os.path.join(out, "..", f"rank{rank}.safetensors"))
    # one result file per rank: two processes sharing one stdout pipe can interleave their lines
    with open(os.path.join(out, "..", f"rank{rank}.result"), "w") as f:
        f.write(f"{rank} {summary['world_size']} {summary['iterations']}")
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_torchrun_two_cpu_processes_identical_weights(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = sorted((tmp_path / f"rank{r}.result").read_text().split() for r in (0, 1))
    # 6 images, 2 processes, batch 1 per process: 3 iterations per epoch, 6 in all, on each rank
    assert results == [["0", "2", "6"], ["1", "2", "6"]]
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert set(w0) == set(w1)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # only rank 0 wrote the run directory; its final weights are those both ranks hold
    final = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(final[k], w0[k]) for k in w0)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len([x for x in lines if '"type": "iter"' in x]) == 6  # one writer: no duplicated lines
    assert not list(tmp_path.glob("run/.checkpoint.*"))
