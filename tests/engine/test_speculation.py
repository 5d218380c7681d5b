"""N-gram drafting and the adaptive depth (engine/speculation.py), without a model."""

from __future__ import annotations

from mlxd.engine.speculation import NgramIndex, Speculator


def test_drafts_continue_the_latest_longest_match():
    index = NgramIndex([1, 2, 3, 4, 9, 2, 3, 5, 6, 7, 2, 3])
    assert index.draft(3) == [5, 6, 7]            # "2 3" last seen before 5 6 7 (the later match wins)
    index.extend([5])
    assert index.draft(2) == [6, 7]               # "2 3 5" now matches its 3-gram
    assert NgramIndex([1, 2, 3]).draft(4) == []   # nothing repeats
    assert NgramIndex([4, 4, 4]).draft(5) == [4] * 5  # a loop goes on: past the end, its period again
    assert NgramIndex([7, 1, 2, 1, 2]).draft(5) == [1, 2, 1, 2, 1]


def _speculator_with_rows(acceptances: list[float], **options) -> Speculator:
    """Rows 0.. whose prompts repeat (so n-gram lookup always finds 4 tokens to draft) at these acceptances."""
    spec = Speculator(max_depth=4, **options)
    for row, acceptance in enumerate(acceptances):
        spec.start(row, [1, 2, 3, 4, 5, 6, 1, 2], cap=None)
        spec._rows[row].acceptance = acceptance
    return spec


def _plain(spec: Speculator, rows: int, seconds: float) -> None:
    """Plain steps of `rows` rows measured at `seconds`, as often as a plain cost needs before it counts."""
    for _ in range(3):
        spec.timed(rows, 1, seconds)


def test_depth_follows_acceptance_and_measured_cost():
    rooms = {0: 100}
    spec = _speculator_with_rows([0.9])
    assert not spec.wants_drafts(rooms)           # no plain step measured yet: nothing to compare against
    spec.timed(1, 1, 0.010)
    spec.timed(1, 1, 0.010)
    assert not spec.wants_drafts(rooms)           # nor twice: one of them may have compiled kernels
    spec.timed(1, 1, 0.010)
    for length in range(2, 6):  # unmeasured widths are assumed cheap, so tried, upwards: one draft first
        assert spec.drafts(rooms) == {0: [3, 4, 5, 6][:length - 1]}
        spec.timed(1, length, 0.010 * (1 + 0.5 * (length - 1)))
    assert len(spec.drafts(rooms)[0]) >= 2        # worth it when drafts are mostly accepted
    spec._rows[0].acceptance = 0.2
    assert not spec.wants_drafts(rooms) and spec.drafts(rooms) == {}   # not when they are mostly rejected
    assert spec.drafts({0: 3}) == {}              # two tokens left: at most one draft, not worth it either
    assert _speculator_with_rows([0.0], adaptive=False).drafts(rooms) == {0: [3, 4, 5, 6]}


def test_the_batch_chooses_one_width_for_all_its_rows():
    """One eager row does not make fifteen others pay for a wide step where a step's cost grows with its tokens
    (a CPU); where it hardly grows (a GPU step bound by host work), every row drafts."""
    rooms = {row: 100 for row in range(16)}
    cpu = _speculator_with_rows([0.95] + [0.1] * 15)
    _plain(cpu, 16, 0.001 * 16)
    for width in range(2, 6):
        cpu.timed(16, width, 0.001 * 16 * width)      # a step's cost in proportion to the tokens it feeds
    assert not cpu.wants_drafts(rooms) and cpu.drafts(rooms) == {}
    gpu = _speculator_with_rows([0.95] + [0.1] * 15)
    _plain(gpu, 16, 0.010 + 0.00001 * 16)
    for width in range(2, 6):
        gpu.timed(16, width, 0.010 + 0.00001 * 16 * width)
    drafts = gpu.drafts(rooms)
    assert len(drafts) == 16 and {len(d) for d in drafts.values()} == {4}
    alone = _speculator_with_rows([0.95])
    _plain(alone, 1, 0.005)
    for width in range(2, 6):
        alone.timed(1, width, 0.001 * width + 0.004)
    assert alone.drafts({0: 100}) != {}           # the same row alone, on the same machine, drafts


def test_an_unmeasured_verify_step_is_judged_by_the_nearest_measured_ratio():
    """A verify step measured at twice a plain step's cost for 16 rows: a batch of 15 assumes the same ratio
    instead of exploring again; a width never measured is assumed no dearer than the widest measured below it."""
    spec = _speculator_with_rows([0.3] * 15)
    _plain(spec, 16, 0.010)
    spec.timed(16, 2, 0.020)
    _plain(spec, 15, 0.009)
    assert abs(spec.costs.verify(15, 2) - 0.018) < 1e-9
    assert abs(spec.costs.verify(15, 4) - 0.018) < 1e-9
    assert spec.costs.verify(15, 1) == 0.009
    assert not spec.wants_drafts({row: 100 for row in range(15)})   # at most 1.4 tokens for 2x the cost: not worth it


class _DraftsNothingUseful:
    """A draft model's stand-in: drafts token 0, which the target never accepts."""

    caught_up = 0.0

    def start(self, row, prompt): pass

    def forget(self, row): pass

    def observe(self, row, drafted, tokens): pass

    def draft(self, depths):
        return {row: [0] * k for row, k in depths.items() if k}


def test_a_draft_model_batch_probes_less_often_while_its_drafts_are_rejected():
    """With no free check of a model's drafts, a batch at depth 0 drafts one token now and then; each probe that
    does not turn speculation on doubles the wait, so rejected drafts cost ever less. Probes are not timed."""
    spec = Speculator(max_depth=4, model=_DraftsNothingUseful())  # type: ignore[arg-type]
    spec.start(0, [1, 2, 3], cap=None)
    spec._rows[0].acceptance = 0.0
    rooms, probes = {0: 10_000}, []
    for step in range(2000):
        drafts = spec.drafts(rooms) if spec.wants_drafts(rooms) else {}
        spec.timed(1, 1 + max(map(len, drafts.values()), default=0), 0.010 if not drafts else 0.5)
        spec.observe(0, drafts.get(0, []), [7])
        if drafts:
            probes.append(step)
    assert [b - a for a, b in zip(probes, probes[1:])][:5] == [33, 65, 129, 257, 257]
    assert probes[0] == 16 and spec.costs.measured_verify() == {}


def test_a_draft_model_batch_that_tries_a_width_again_waits_longer_after_each_try():
    """Rows start at the prior acceptance (0.5), so the batch drafts as soon as a plain step is measured, and again
    each time the width's provisional cost is forgotten for its retry: each such try that does not keep speculation
    on doubles the wait before the next probe, as a probe does. It used to reset the wait to the first one, so a
    16-row batch of a draft model drafted nothing useful every 17 steps (CPU, tiny Llama drafted by a random copy,
    over gRPC: 0.93x plain at 16 streams, 0.96x after)."""
    spec = Speculator(max_depth=4, model=_DraftsNothingUseful())  # type: ignore[arg-type]
    rows = range(16)
    for row in rows:
        spec.start(row, [1, 2, 3], cap=None)
    rooms, drafted = dict.fromkeys(rows, 10_000), []
    for step in range(400):
        drafts = spec.drafts(rooms) if spec.wants_drafts(rooms) else {}
        spec.timed(16, 1 + max(map(len, drafts.values()), default=0), 0.021 if drafts else 0.0035)
        for row in rows:
            spec.observe(row, drafts.get(row, []), [7])
        if drafts:
            drafted.append(step)
    waits = [b - a for a, b in zip(drafted, drafted[1:])]
    assert waits == sorted(waits) and waits[0] > 32, drafted   # no wait shorter than the one before
    assert len([step for step in drafted if step < 96]) <= 3   # a 96-token request's steps: the tries only


def test_a_draft_model_batch_probes_only_rows_with_more_than_the_first_wait_to_go():
    """A probe catches the draft model up on a row's whole history; a row with 16 tokens or fewer to go cannot earn
    that back, so it is left out, and a batch of only such rows does not probe."""
    spec = Speculator(max_depth=4, model=_DraftsNothingUseful())  # type: ignore[arg-type]
    for row in (0, 1):
        spec.start(row, [1, 2, 3], cap=None)
        spec._rows[row].acceptance = 0.0
    spec.timed(2, 1, 0.010)
    spec._plain_steps = spec._probe_after  # the wait is over
    assert not spec.wants_drafts({0: 16, 1: 5})
    assert spec.wants_drafts({0: 17, 1: 5})
    assert spec.drafts({0: 17, 1: 5}) == {0: [0]}   # the row near its end drafts nothing


def test_a_draft_model_batch_of_short_requests_keeps_probing():
    """The wait before a probe counts the batch's steps: requests shorter than it (here 50 steps, against waits of
    up to 256) still let the batch relearn now and then. Counted per row, no row ever waited long enough."""
    spec = Speculator(max_depth=4, model=_DraftsNothingUseful())  # type: ignore[arg-type]
    row, probes = 0, []
    spec.start(row, [1, 2, 3], cap=None)
    for step in range(2000):
        if step % 50 == 49:  # a request ends, the next starts in its place
            spec.forget(row)
            row += 1
            spec.start(row, [1, 2, 3], cap=None)
        rooms = {row: 10_000}
        drafts = spec.drafts(rooms) if spec.wants_drafts(rooms) else {}
        spec.timed(1, 1 + max(map(len, drafts.values()), default=0), 0.010 if not drafts else 0.5)
        spec.observe(row, drafts.get(row, []), [7])
        if drafts:
            probes.append(step)
    assert len(probes) >= 9 and probes[-1] > 1700   # every 257 steps to the end (before: none after step 131)


def test_rows_learn_acceptance_from_probes_and_verified_runs():
    spec = Speculator(max_depth=4)
    spec.start(0, [1, 2, 3, 1, 2], cap=None)
    spec.start(1, [1, 2, 3], cap=0)                 # a request that turned speculation off
    assert not spec.wants_drafts({0: 10, 1: 10})   # no plain step measured: no drafts, but each row looked
    assert spec._rows[0].probe == 3                 # what it looked up: "1 2" came before, then 3
    before = spec._rows[0].acceptance
    spec.observe(0, [], [7])                       # it would have drafted 3; 7 came: a rejection
    assert spec._rows[0].acceptance < before
    _plain(spec, 2, 0.01)
    assert spec.drafts({0: 10, 1: 10}) == {}     # nothing to copy after a new token
    spec.observe(0, [], [9])
    for _ in range(30):
        spec.observe(0, [5, 5], [5, 5, 5])         # every draft accepted
    assert spec.drafts({0: 10, 1: 10}) != {}
    assert 1 not in spec.drafts({0: 10, 1: 10})
    assert spec.drafts({0: 1}) == {}               # one token left: nothing to draft


def test_one_slow_step_does_not_move_a_cost():
    """On a GPU the first step of a new shape compiles kernels: a 2 s plain step among 10 ms ones must not make
    plain steps look dear (and a verify step cheap) for the steps after it."""
    spec = _speculator_with_rows([0.0])
    spec.timed(1, 1, 2.0)
    spec.timed(1, 1, 0.010)
    spec.timed(1, 1, 0.010)
    spec.timed(1, 2, 0.013)
    assert spec.costs.plain(1) == 0.010 and not spec.wants_drafts({0: 100})


def test_a_verify_cost_measured_long_ago_is_forgotten():
    """A width measured dear in a slow spell is tried again once its measurement is old, not never again."""
    from mlxd.engine.step_costs import STALE

    spec = _speculator_with_rows([0.8])
    spec.timed(1, 1, 0.010)
    spec.timed(1, 2, 0.100)                        # a slow spell
    assert not spec.wants_drafts({0: 100})
    for _ in range(STALE + 256):
        spec.timed(1, 1, 0.010)
    assert spec.costs.measured_verify() == {} and spec.wants_drafts({0: 100})


def test_a_verify_step_is_never_taken_as_cheaper_than_a_plain_step():
    """Plain steps are not timed while the batch speculates, so a plain cost measured once while a kernel
    compiled would stay: verify steps measured below it must not keep rows that accept nothing drafting (an H200
    ran a draft model's first request at 11 tok/s against 185 plain that way)."""
    spec = _speculator_with_rows([0.0])
    for seconds in (2.0, 2.0, 0.005):               # two of the first plain steps compiled kernels
        spec.timed(1, 1, seconds)
    spec.timed(1, 2, 0.090)                         # measured below the plain cost: that one is stale
    assert spec.costs.plain(1) is None and not spec.wants_drafts({0: 100})
    _plain(spec, 1, 0.005)
    assert spec.costs.verify(1, 2) == 0.090 and not spec.wants_drafts({0: 100})


def test_a_verify_step_measured_once_while_compiling_is_tried_again():
    """On an H200 the first verify step of each width compiled kernels for seconds; measured once at that, a
    copy-heavy task's n-gram drafts never ran again. A cost of fewer than three measurements is the least of them
    and is retried after RETRY steps."""
    from mlxd.engine.step_costs import RETRY

    spec = _speculator_with_rows([0.9])
    _plain(spec, 1, 0.005)
    assert spec.drafts({0: 100}) == {0: [3]}
    spec.timed(1, 2, 2.8)                           # compiling
    assert not spec.wants_drafts({0: 100})
    for _ in range(RETRY):
        spec.timed(1, 1, 0.005)
    assert spec.costs.measured_verify() == {} and spec.drafts({0: 100}) == {0: [3]}   # tried again
    spec.timed(1, 2, 0.006)
    assert spec.costs.verify(1, 2) == 0.006 and spec.wants_drafts({0: 100})
    spec.timed(1, 2, 0.007)
    spec.timed(1, 2, 0.0065)
    firm = spec.costs.verify(1, 2)                  # the median of all four: the compiling one is outvoted
    assert abs(firm - 0.00675) < 1e-12
    for _ in range(RETRY + 1):
        spec.timed(1, 1, 0.005)
    assert spec.costs.measured_verify() == {(1, 2): firm}  # no longer provisional: kept


def test_a_verify_step_retried_still_tells_other_batch_sizes_its_cost():
    """A draft model's verify step measured twice for one row, at 5x a plain step: while its cost waits for its
    retry, a new batch of 16 rows assumes the same ratio rather than a verify step as cheap as a plain one (on an
    H100 each 16-row batch drafted at its first step, its draft model catching up on 16 prompts)."""
    from mlxd.engine.step_costs import RETRY

    spec = _speculator_with_rows([0.5])
    _plain(spec, 1, 0.005)
    spec.timed(1, 2, 2.0)                           # compiling
    spec.timed(1, 2, 0.025)
    for _ in range(RETRY):
        spec.timed(1, 1, 0.005)
    assert spec.costs.measured_verify() == {}       # provisional: forgotten for its retry...
    assert spec.costs.verify(1, 2) == 0.005         # ...which assumes it as cheap as a plain step...
    _plain(spec, 16, 0.007)
    assert abs(spec.costs.verify(16, 2) - 0.035) < 1e-9   # ...while other batch sizes keep its ratio
    once = _speculator_with_rows([0.5])
    _plain(once, 1, 0.005)
    once.timed(1, 2, 2.0)                           # measured once, maybe compiling: no hint once forgotten
    for _ in range(RETRY):
        once.timed(1, 1, 0.005)
    _plain(once, 16, 0.007)
    assert once.costs.verify(16, 2) == 0.007


def test_widths_measured_once_and_forgotten_still_bound_the_exploration():
    """On an H100 verify steps cost 2-3x a plain one at every width: a copy whose drafts held 98 % of the time, knowing
    only width 2's cost (the others measured once in an earlier request, then forgotten for their retry), weighed
    widths 2 and 3 alone, and neither paid. A plausible measurement (within 2 x width plain steps) still counts."""
    from mlxd.engine.step_costs import RETRY

    spec = _speculator_with_rows([0.7])
    _plain(spec, 1, 0.010)
    for width, seconds in ((3, 0.024), (4, 0.022), (5, 0.021)):
        spec.timed(1, width, seconds)
    for _ in range(RETRY):
        spec.timed(1, 1, 0.010)
    spec.timed(1, 2, 0.028)
    assert spec.costs.widest() == 5 and abs(spec.costs.verify(1, 5) - 0.022) < 1e-12  # its nearest known below
    assert spec.drafts({0: 100}) == {0: [3, 4, 5, 6]}


def test_ngram_rows_judge_a_step_by_the_drafts_they_find_a_token_early():
    """Before a step a row's newest token is still being computed, and reading it drains the pipeline: the row looks
    its drafts up without it, the first token found standing for it (its probe). Only drafts after that one make the
    step read it and verify."""
    for prompt, room, wanted, probe in (([1, 2, 3, 4, 5, 9, 1, 2], 10, True, 3),  # "1 2" seen before, 3 4 5 9 after
                                        ([1, 2, 3, 4, 5, 9, 1, 2], 1, False, 3),   # room for one: it only foretells
                                        ([5, 5], 10, True, 5)):                    # a loop: 5 5 5 5 5 found
        spec = Speculator(max_depth=4)
        spec.start(0, prompt, cap=None)
        _plain(spec, 1, 0.01)
        assert spec.wants_drafts({0: room}, pending=[0]) is wanted
        assert spec._rows[0].probe == probe
    spec = Speculator(max_depth=4)                    # with nothing pending (after a verify step), a token found
    spec.start(0, [5, 5], cap=None)                   # is a draft
    _plain(spec, 1, 0.01)
    assert spec.wants_drafts({0: 10})


def test_drafts_found_a_token_early_count_as_likely_as_they_turn_out():
    """Drafts looked up a token early hold only if the newest token is the one the lookup put first (as likely as the
    row's acceptance), or if looking again once it is read finds others. At 0.3, with nothing learned of the second,
    they are not worth draining the pipeline for a verify step at 1.3x a plain one; the same drafts found with the
    newest token read are, and so are they where looking again has mostly found drafts."""
    def speculator() -> Speculator:
        spec = _speculator_with_rows([0.3] * 16)
        _plain(spec, 16, 0.010)
        for width in range(2, 6):
            spec.timed(16, width, 0.013)
        return spec
    rooms = dict.fromkeys(range(16), 100)
    assert not speculator().wants_drafts(rooms, pending=range(16))
    assert speculator().wants_drafts(rooms)
    fruitful = speculator()       # where looking again after reading the newest token has found drafts, they count
    fruitful._flush_yield = 0.95  # as often as it has
    assert fruitful.wants_drafts(rooms, pending=range(16))


def test_looking_drafts_up_again_learns_how_often_it_still_finds_some():
    """Only a look after drafts found a token early teaches how often they still draft: one after a verify step
    (nothing pending, the newest token known) found its drafts with the token in hand."""
    spec = _speculator_with_rows([0.9])
    _plain(spec, 1, 0.010)
    assert spec.wants_drafts({0: 100}, pending=[0])     # found a token early...
    before = spec._flush_yield
    spec._rows[0].index = NgramIndex([1, 2, 3])          # ...and nothing to draft once the newest token is known
    assert spec.drafts({0: 100}) == {} and spec._flush_yield < before
    after = spec._flush_yield
    assert spec.drafts({0: 100}) == {} and spec._flush_yield == after   # no early look before this one


def test_a_verify_steps_cost_leaves_out_the_draft_models_catch_up():
    """A try after plain steps first takes in what the rows generated meanwhile: exploration, like a probe, not what
    a verify step costs while the batch speculates."""
    model = _DraftsNothingUseful()
    spec = Speculator(max_depth=4, model=model)  # type: ignore[arg-type]
    model.caught_up = 0.004
    spec.timed(2, 3, 0.010)
    model.caught_up = 0.0
    spec.timed(2, 3, 0.008)
    spec.timed(2, 1, 0.002)  # a plain step: nothing left out
    assert spec.costs.measured_verify() == {(2, 3): 0.006}
    assert spec.costs._samples[2][-1] == 0.002


def test_steps_of_rows_that_never_draft_do_not_bring_a_probe_nearer():
    """The wait before a draft model's batch probes counts the steps in which some row could have drafted: a
    batch of requests with speculation off (or past their last draft) steps on without it, and the speculating
    requests that come after it wait the whole wait, instead of probing (catching the draft model up on every
    prompt) at their first step."""
    spec = Speculator(max_depth=4, model=_DraftsNothingUseful())  # type: ignore[arg-type]
    spec.start(0, [1, 2, 3], cap=None)
    spec._rows[0].acceptance = 0.0
    spec.timed(1, 1, 0.010)
    spec._plain_steps = spec._probe_after - 1
    spec.forget(0)
    for _ in range(100):  # a request that does not speculate (its row was never started)
        assert not spec.wants_drafts({1: 500})
        spec.timed(1, 1, 0.010)
    spec.start(2, [1, 2, 3], cap=None)
    spec._rows[2].acceptance = 0.0
    assert not spec.wants_drafts({2: 500})    # one step short of the wait, as before the plain request
    spec.timed(1, 1, 0.010)
    assert spec.wants_drafts({2: 500}) and spec.drafts({2: 500}) == {2: [0]}
