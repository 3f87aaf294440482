"""Private, verified inference from PyTorch in five lines (the README's Python quick start).

    python examples/python/quickstart.py
"""

import numpy as np
import torch
import vericonv

net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10))
model = vericonv.from_torch(net, torch.rand(1, 3, 32, 32))
pm = model.private(privacy="pad")                    # the convolutions go to an (in-process) cloud, masked
x = np.random.rand(4, 3, 32, 32).astype(np.float32)
logits = pm(x)                                       # verified; equal to the quantized model's
assert np.array_equal(logits, pm.quantized(x))
print(logits.argmax(1), pm.stats())
