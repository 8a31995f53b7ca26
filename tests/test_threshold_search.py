"""The one threshold search behind the gates' calibration and the rivals' thresholds."""
import math

from lazydit.train.threshold_search import search_increasing


def counted(f):
    calls = []

    def g(x):
        calls.append(x)
        return f(x)
    return g, calls


def test_interpolation_needs_fewer_tries_than_halving():
    # A skip ratio that is a smooth sigmoid of the log-threshold, as the policies' roughly are.
    f, calls = counted(lambda x: 1 / (1 + math.exp(-(x + 3) / 1.5)))
    x, got = search_increasing(f, 0.3, math.log(1e-5), math.log(10), -4.6, 3.45, rounds=20, tol=0.002)
    assert abs(got - 0.3) < 0.002 and got == f(x)
    assert len(calls) <= 6  # halving the same range to this tolerance takes 9 or more


def test_walks_out_from_the_start_and_stops_at_the_end_of_the_range():
    f, calls = counted(lambda x: min(1.0, max(0.0, (x + 20) / 4)))  # only moves near x = -18
    x, got = search_increasing(f, 0.5, -30.0, 30.0, 0.0, 0.5, rounds=12, tol=0.005)
    assert abs(got - 0.5) < 0.005
    f, calls = counted(lambda x: 0.2)  # never reaches the target: the closest try, no wasted calls
    x, got = search_increasing(f, 0.9, -30.0, 30.0, 0.0, 0.5, rounds=50, tol=0.005)
    assert got == 0.2 and calls[-1] == 30.0 and len(calls) < 12


def test_a_flat_stretch_still_shrinks_the_bracket():
    # A step function (few decisions): false position alone could stall next to one end.
    f, calls = counted(lambda x: 0.0 if x < 0.3 else (0.4 if x < 0.31 else 1.0))
    x, got = search_increasing(f, 0.4, -1.0, 1.0, -1.0, 0.25, rounds=30, tol=0.01)
    assert got == 0.4 and 0.3 <= x < 0.31


def test_a_known_slope_replaces_the_walk_by_a_newton_step():
    # Near-linear around the answer, as the skip ratio is once a cheaper search has found it.
    f = lambda x: 0.5 + 0.08 * (x - 1.3) + 0.002 * (x - 1.3) ** 3  # noqa: E731
    walk, walked = counted(f)
    search_increasing(walk, 0.5, -30.0, 30.0, 0.4, 0.25, rounds=12, tol=0.005)
    newton, stepped = counted(f)
    x, got = search_increasing(newton, 0.5, -30.0, 30.0, 0.4, 0.25, rounds=12, tol=0.005, slope=0.08)
    assert abs(got - 0.5) < 0.005 and len(stepped) == 2 < len(walked)
    # A useless slope (none, or not increasing) falls back to the walk.
    for bad in (None, 0.0, -1.0):
        again, calls = counted(f)
        search_increasing(again, 0.5, -30.0, 30.0, 0.4, 0.25, rounds=12, tol=0.005, slope=bad)
        assert calls == walked
