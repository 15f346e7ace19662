"""Evaluate your own model with robustarch (README, "Evaluate your own model").

Trains a small CNN for one pass over 5,000 Fashion-MNIST training images (Debian's dataset-fashion-mnist,
installed by scripts/setup.sh), then measures its clean and adversarial accuracy on 200 test images under
FGSM and PGD at 8/255 with the reliability checks, and its RobustBench-style robust accuracy.
Run: .venv/bin/python examples/evaluate_own_model.py
"""

import torch
from torch import nn

import robustarch
from robustarch import data

torch.manual_seed(0)
train, _ = data.load("fashion-mnist", split="train", subset="balanced:5000")
test, _ = data.load("fashion-mnist", split="test", limit=200)
x_train = train.uint8().float() / 255
y_train = train.labels

net = nn.Sequential(  # your architecture: it expects normalized input
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
)  # fmt: skip
mean, std = (0.2860,), (0.3530,)
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
for i in range(0, len(x_train), 100):
    loss = nn.functional.cross_entropy(net((x_train[i : i + 100] - mean[0]) / std[0]), y_train[i : i + 100])
    opt.zero_grad()
    loss.backward()
    opt.step()

# mean/std: robustarch puts the normalization inside the model, so attacks work on [0, 1] pixels
results = robustarch.evaluate(net.eval(), test, attacks=["fgsm", "pgd"], mean=mean, std=std, name="my-cnn")
print(results.table())
print([f"{f['attack']}: {f['check']} {f['status']}" for f in results.flags() if f["status"] != "ok"])
# the same model, data and attacks are the same runs: benchmark's worst case is over the numbers above
clean, robust = robustarch.benchmark(net, test, attacks=["fgsm", "pgd"], mean=mean, std=std, name="my-cnn")
print(f"clean {clean:.1%}, robust (worst case over FGSM and PGD-10 at 8/255) {robust:.1%}")
