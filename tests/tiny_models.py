"""Small models built in the tests (seeded, so every run sees the same weights): torch modules,
and ONNX graphs of shapes torch does not export."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn


def seeded(cls, *args, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return cls(*args, **kwargs).eval()


class MLP(nn.Module):
    def __init__(self, d_in=16, hidden=32, d_out=8):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class ResidualCNN(nn.Module):
    """Conv-BN-ReLU stem, two residual blocks, global pooling and a classifier."""

    def __init__(self, channels=8, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.BatchNorm2d(channels),
            )
            for _ in range(2)
        )
        self.head = nn.Linear(channels, classes)
        for module in self.modules():  # non-trivial BN statistics
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x.mean(dim=(2, 3)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block with causal multi-head attention."""

    def __init__(self, d, heads, ffn):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, ffn)
        self.down = nn.Linear(ffn, d)

    def forward(self, x):
        b, s, d = x.shape
        h = self.ln1(x)
        split = lambda t: t.view(b, s, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        causal = torch.ones(s, s, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        attn = torch.softmax(scores, dim=-1) @ v
        x = x + self.o(attn.transpose(1, 2).reshape(b, s, d))
        return x + self.down(torch.nn.functional.gelu(self.up(self.ln2(x))))


class TinyGPT(nn.Module):
    """GPT-2 style: token + position embeddings, pre-LN blocks, final LN, tied head."""

    def __init__(self, vocab=97, d=32, heads=4, layers=2, ffn=64, max_len=64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, heads, ffn) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, input_ids):
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = self.tok(input_ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.T


class MBConv(nn.Module):
    """EfficientNet-Lite0 in small: stem, inverted residual (1×1 expand, 3×3 depthwise, 1×1
    project, each with BatchNorm, ReLU6), 1×1 head conv, pooling and a classifier."""

    def __init__(self, width=16, expand=4, classes=10):
        super().__init__()
        hidden = width * expand
        self.stem = _conv_bn(3, width, 3)
        self.expand = _conv_bn(width, hidden, 1)
        self.depthwise = _conv_bn(hidden, hidden, 3, groups=hidden)
        self.project = _conv_bn(hidden, width, 1, activation=False)
        self.head = _conv_bn(width, 4 * width, 1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.fc(self.head(x).mean(dim=(2, 3)))


def _conv_bn(c_in, c_out, kernel, groups=1, activation=True):
    bn = nn.BatchNorm2d(c_out)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    layers = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False), bn]
    return nn.Sequential(*layers, *([nn.ReLU6()] if activation else []))


def unrolled_rnn(steps: int = 3, width: int = 16):
    """h_{t+1} = tanh(Gemm(h_t, W, transB=1)) for ``steps`` steps, every step reading one W
    (an unrolled RNN, as the legacy exporter writes LSTMs); returns the model and W."""
    weight = np.random.default_rng(0).standard_normal((width, width)).astype(np.float32) / 4
    nodes, state = [], "x"
    for t in range(steps):
        nodes += [helper.make_node("Gemm", [state, "W"], [f"g{t}"], name=f"step{t}", transB=1),
                  helper.make_node("Tanh", [f"g{t}"], [f"h{t}"], name=f"tanh{t}")]
        state = f"h{t}"
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", width])],
                              [helper.make_tensor_value_info(state, TensorProto.FLOAT, ["b", width])],
                              [numpy_helper.from_array(weight, "W")])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])), weight
