"""Neighborhood follows NATTEN (>= 0.20): hand-computed neighbour tables, the k-keys-per-query invariant,
and, when NATTEN is installed, NATTEN's own masks on random configurations."""

import warnings
from math import prod

import numpy as np
import pytest
import torch
from brute_force import brute_mask

from maskir.canvas import Canvas
from maskir.ir import Neighborhood, expand
from maskir.reference import reference_mask


def neighbours(pattern: Neighborhood, shape: tuple[int, ...]) -> list[list[int]]:
    """The kv tokens each query sees, row by row."""
    return [np.flatnonzero(row).tolist() for row in reference_mask(pattern, shape)]


# -- 1-D tables, worked out by hand from the rule in DESIGN.md ----------------------------------------

ONE_D_TABLES = {
    "odd kernel shifts inward at the borders": (
        Neighborhood(3),
        7,
        [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [4, 5, 6]],
    ),
    "even kernel takes 2 left, 1 right": (
        Neighborhood(4),
        7,
        [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6], [3, 4, 5, 6]],
    ),
    "kernel 1 is the diagonal": (Neighborhood(1), 4, [[0], [1], [2], [3]]),
    "dilation 3 on 10 tokens: groups {0,3,6,9}, {1,4,7}, {2,5,8}": (
        Neighborhood(3, dilation=3),
        10,
        [[0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8], [3, 6, 9], [1, 4, 7], [2, 5, 8], [3, 6, 9]],
    ),
    "dilation 3, even kernel: the long group's windows shift further": (
        Neighborhood(2, dilation=3),
        10,
        [[0, 3], [1, 4], [2, 5], [0, 3], [1, 4], [2, 5], [3, 6], [4, 7], [5, 8], [6, 9]],
    ),
    "stride 2: a pair shares the window of its right member": (
        Neighborhood(3, stride=2),
        8,
        [[0, 1, 2], [0, 1, 2], [2, 3, 4], [2, 3, 4], [4, 5, 6], [4, 5, 6], [5, 6, 7], [5, 6, 7]],
    ),
    "stride 3: the last group's leader is clipped to the last token": (
        Neighborhood(3, stride=3),
        7,
        [[0, 1, 2], [0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5], [3, 4, 5], [4, 5, 6]],
    ),
    "stride above the kernel (NATTEN rejects it, maskir keeps the rule)": (
        Neighborhood(2, stride=4),
        8,
        [[1, 2]] * 4 + [[5, 6]] * 4,
    ),
    "causal stride above the kernel: early members of a stride group see nothing": (
        Neighborhood(2, stride=4, causal=True),
        8,
        [[], [], [2], [2, 3], [], [], [6], [6, 7]],
    ),
    "causal: the k tokens ending at the query": (
        Neighborhood(3, causal=True),
        6,
        [[0], [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]],
    ),
    "causal with dilation 2": (
        Neighborhood(2, dilation=2, causal=True),
        7,
        [[0], [1], [0, 2], [1, 3], [2, 4], [3, 5], [4, 6]],
    ),
}


@pytest.mark.parametrize("pattern, length, expected", ONE_D_TABLES.values(), ids=ONE_D_TABLES.keys())
def test_neighborhood_1d_table(pattern, length, expected):
    assert neighbours(pattern, (length,)) == expected


def test_neighborhood_causal_stride_matrix():
    """Causal, kernel 3, stride 2: a query's window ends at its stride group's last member, cut at itself."""
    expected = np.array(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [0, 1, 1, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 1, 1, 1],
        ],
        dtype=bool,
    )
    assert np.array_equal(reference_mask(Neighborhood(3, stride=2, causal=True), (7,)), expected)


# -- 2-D and 3-D: per-dim arguments, neighbours of chosen queries as coordinates ----------------------

ND_TABLES = {
    "2-D kernel (3, 2), causal rows only": (
        Neighborhood((3, 2), causal=(True, False)),
        (4, 5),
        {
            (0, 0): {(0, 0), (0, 1)},
            (2, 3): {(0, 2), (0, 3), (1, 2), (1, 3), (2, 2), (2, 3)},
            (3, 4): {(1, 3), (1, 4), (2, 3), (2, 4), (3, 3), (3, 4)},
        },
    ),
    "2-D kernel (2, 3), dilation (2, 1)": (
        Neighborhood((2, 3), dilation=(2, 1)),
        (5, 6),
        {
            (4, 0): {(2, 0), (2, 1), (2, 2), (4, 0), (4, 1), (4, 2)},
            (1, 5): {(1, 3), (1, 4), (1, 5), (3, 3), (3, 4), (3, 5)},
        },
    ),
    "3-D kernel (2, 3, 2), dilation (1, 1, 2), causal middle dim": (
        Neighborhood((2, 3, 2), dilation=(1, 1, 2), causal=(False, True, False)),
        (3, 4, 5),
        {
            (1, 2, 3): {(t, y, x) for t in (0, 1) for y in (0, 1, 2) for x in (1, 3)},
            (0, 0, 4): {(0, 0, 2), (0, 0, 4), (1, 0, 2), (1, 0, 4)},
        },
    ),
}


@pytest.mark.parametrize("pattern, shape, expected", ND_TABLES.values(), ids=ND_TABLES.keys())
def test_neighborhood_nd_table(pattern, shape, expected):
    mask = reference_mask(pattern, shape)
    for query, keys in expected.items():
        q = int(np.ravel_multi_index(query, shape))
        got = {tuple(int(c) for c in xy) for xy in zip(*np.unravel_index(np.flatnonzero(mask[q]), shape))}
        assert got == keys, f"query {query}"


# -- invariants and random configurations ---------------------------------------------------------------


def random_config(rng: np.random.Generator, ndim: int, natten_limits: bool):
    """A shape and a valid Neighborhood on it; natten_limits keeps kernel >= 2 and stride <= kernel."""
    shape = tuple(int(x) for x in rng.integers(2, (25, 8, 5)[ndim - 1], size=ndim, endpoint=True))
    kernel, dilation, stride = [], [], []
    smallest_kernel = 2 if natten_limits else 1
    for extent in shape:
        d = int(rng.integers(1, extent // smallest_kernel, endpoint=True))
        k = int(rng.integers(smallest_kernel, extent // d, endpoint=True))
        kernel.append(k)
        dilation.append(d)
        stride.append(int(rng.integers(1, k if natten_limits else k + 2, endpoint=True)))
    causal = tuple(bool(c) for c in rng.random(ndim) < 0.3)
    return shape, Neighborhood(tuple(kernel), tuple(dilation), tuple(stride), causal)


def test_non_causal_query_sees_exactly_prod_kernel_keys():
    rng = np.random.default_rng(1)
    for ndim in (1, 2, 3):
        for _ in range(30):
            shape, node = random_config(rng, ndim, natten_limits=False)
            node = Neighborhood(node.kernel, node.dilation, node.stride)
            counts = reference_mask(node, shape).sum(axis=1)
            assert (counts == prod(node.kernel)).all(), f"{node} on {shape}"


def test_causal_query_with_stride_up_to_kernel_sees_itself_and_at_most_prod_kernel_keys():
    rng = np.random.default_rng(2)
    for ndim in (1, 2, 3):
        for _ in range(30):
            shape, node = random_config(rng, ndim, natten_limits=True)
            node = Neighborhood(node.kernel, node.dilation, node.stride, causal=True)
            mask = reference_mask(node, shape)
            assert mask.diagonal().all() and (mask.sum(axis=1) <= prod(node.kernel)).all(), f"{node} on {shape}"


def test_neighborhood_random_configs_match_brute_force():
    rng = np.random.default_rng(3)
    for ndim in (1, 2, 3):
        for _ in range(15):
            shape, node = random_config(rng, ndim, natten_limits=False)
            assert np.array_equal(reference_mask(node, shape), brute_mask(node, shape)), f"{node} on {shape}"


PER_DIM_ARGUMENTS = ("kernel", "dilation", "stride", "causal")


def natten_mask(natten, shape: tuple[int, ...], node: Neighborhood) -> np.ndarray:
    """NATTEN's own mask, read from its flex-fna attention: zero scores and one-hot values, so output
    [q, kv] is 1 / (number of neighbours) where kv is a neighbour of q and exactly 0 elsewhere."""
    n = prod(shape)
    args = {name: expand(getattr(node, name), len(shape), "Neighborhood", name) for name in PER_DIM_ARGUMENTS}
    head_dim = max(16, 1 << (n - 1).bit_length())
    zeros = torch.zeros(1, *shape, 1, head_dim)
    one_hot = torch.eye(n, head_dim).reshape(1, *shape, 1, head_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = natten.functional.neighborhood_attention_generic(
            zeros,
            zeros,
            one_hot,
            kernel_size=args["kernel"],
            stride=args["stride"],
            dilation=args["dilation"],
            is_causal=args["causal"],
            backend="flex-fna",
            attention_kwargs={"backend": "flex-fmha"},  # NATTEN's path when the kernel spans the canvas
        )
    return (out.reshape(n, head_dim)[:, :n] > 0).numpy()


def test_neighborhood_matches_natten_masks():
    natten = pytest.importorskip("natten", minversion="0.20")
    rng = np.random.default_rng(4)
    compared = 0
    for ndim, count in ((1, 80), (2, 70), (3, 50)):
        for _ in range(count):
            shape, node = random_config(rng, ndim, natten_limits=True)
            if ndim == 1 and node.causal[0] and node.kernel[0] == shape[0]:
                continue  # NATTEN hands this to plain causal FMHA, which its CPU (flex) backend lacks
            compared += 1
            got = reference_mask(node, Canvas(shape))
            expected = natten_mask(natten, shape, node)
            assert np.array_equal(got, expected), (
                f"{node} on {shape}: (q, kv) {np.argwhere(got != expected)[:5].tolist()}"
            )
    assert compared >= 180


def natten_limits_hold(node: Neighborhood, ndim: int = 1) -> bool:
    """NATTEN's own argument limits: kernel >= 2 and stride <= kernel in every dim."""
    kernel, stride = (expand(getattr(node, name), ndim, "Neighborhood", name) for name in ("kernel", "stride"))
    return all(k >= 2 and s <= k for k, s in zip(kernel, stride))


@pytest.mark.parametrize(
    "pattern, length, expected",
    [case for case in ONE_D_TABLES.values() if natten_limits_hold(case[0])],
    ids=[name for name, case in ONE_D_TABLES.items() if natten_limits_hold(case[0])],
)
def test_natten_agrees_with_the_hand_tables(pattern, length, expected):
    natten = pytest.importorskip("natten", minversion="0.20")
    got = [np.flatnonzero(row).tolist() for row in natten_mask(natten, (length,), pattern)]
    assert got == expected
