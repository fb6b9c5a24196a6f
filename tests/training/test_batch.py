import torch
from training_fixtures import random_completions

from rlvr.training.batch import make_batch, micro_batches


def test_layout_aligns_every_response_at_the_prompt_width():
    comps = random_completions(50, num_prompts=3, n=2)
    batch = make_batch(comps, [1.0] * 6, [True] * 6, [0, 0, 1, 1, 2, 2], pad_id=0)
    P = batch.prompt_width
    for i, c in enumerate(comps):
        assert batch.input_ids[i, P - len(c.prompt_ids) : P].tolist() == c.prompt_ids
        assert batch.input_ids[i, P : P + len(c.token_ids)].tolist() == c.token_ids
        assert batch.response_mask[i].sum().item() == len(c.token_ids)
        assert torch.allclose(batch.old_logprobs[i, : len(c.token_ids)], torch.tensor(c.logprobs))
        assert batch.attention[i].sum().item() == len(c.prompt_ids) + len(c.token_ids)


def test_micro_batches_cover_every_row_once_within_the_token_budget():
    comps = random_completions(50, num_prompts=6, n=4, seed=3)
    batch = make_batch(comps, [0.0] * 24, [False] * 24, list(range(24)), pad_id=0)
    seen = []
    for mb in micro_batches(batch, list(range(24)), max_tokens=60):
        rows = mb.rows.tolist()
        seen += rows
        assert len(rows) == 1 or mb.input_ids.numel() <= 60
        for j, r in enumerate(rows):  # trimmed slices keep each row's tokens in place
            c = comps[r]
            p = mb.prompt_width
            assert mb.input_ids[j, p - len(c.prompt_ids) : p].tolist() == c.prompt_ids
            assert mb.input_ids[j, p : p + len(c.token_ids)].tolist() == c.token_ids
            # positions count real tokens only, so left padding does not shift them
            assert mb.position_ids[j, p - len(c.prompt_ids)].item() == 0
    assert sorted(seen) == list(range(24))


def test_training_rows_split_trajectories_by_turn_and_the_layout_maps_them_back():
    from rlvr.rollout.multi_turn import Segment, Trajectory
    from rlvr.rollout.types import Completion
    from rlvr.training.batch import training_rows

    whole = Completion(0, [1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], "", "stop")
    assert training_rows([whole, whole]) == ([whole, whole], None)  # nothing split: the completions
    split = Trajectory(
        1,
        [7],
        [10, 11, 12, 13, 14],
        [-1.0, -2.0, -3.0, -4.0, -5.0],
        "",
        "stop",
        mask=[1] * 5,
        segments=[Segment([7], 0, 2), Segment([7, 10, 11, 99], 2, 5)],
    )
    rows, layout = training_rows([whole, split])
    assert [(r.prompt_ids, r.token_ids, r.logprobs) for r in rows] == [
        ([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3]),
        ([7], [10, 11], [-1.0, -2.0]),
        ([7, 10, 11, 99], [12, 13, 14], [-3.0, -4.0, -5.0]),
    ]
    assert (layout.trajectory, layout.offset, layout.widths, layout.lengths) == (
        [0, 1, 1],
        [0, 0, 2],
        [3, 2, 3],
        [3, 5],
    )
    assert layout.turns == [0, 0, 1] and layout.first_rows == [0, 1]
    batch = make_batch(rows, [1.0, 2.0, 2.0], [True, False, False], [0, 1, 1], 0)
    whole_rows = layout.gather_tokens(batch.old_logprobs)  # [trajectories, L]: the turns end to end
    torch.testing.assert_close(
        whole_rows, torch.tensor([[-0.1, -0.2, -0.3, 0.0, 0.0], [-1.0, -2.0, -3.0, -4.0, -5.0]])
    )
    assert torch.equal(layout.scatter_tokens(whole_rows, batch.old_logprobs.shape[1]), batch.old_logprobs)
    assert layout.gather_rows(batch.rewards).tolist() == [1.0, 2.0]
