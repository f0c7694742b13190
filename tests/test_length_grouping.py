"""Length-grouped batches (``data.group_by_length``): less padding, every row once, sharded, seeded, resumable."""

from __future__ import annotations

import random

import pytest
from harness import fake_trainer

from lit_lora.ckpt_settings import CheckpointSettingsMismatch
from lit_lora.data.length_grouping import LengthGroupedSampler
from lit_lora.data.resumable import ResumableDataLoader, ResumableSampler


def random_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 500) for _ in range(n)]


def padded_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of the padded batch tensors that is padding."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


def rank_batches(sampler, batch_size: int) -> list[list[int]]:
    indices = list(sampler)
    return [indices[s:s + batch_size] for s in range(0, len(indices), batch_size)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_row_once_per_epoch_across_ranks_and_less_padding(world):
    n, batch = 1003, 4  # not a multiple of batch x world: a short last batch and DistributedSampler's padding
    lengths = random_lengths(n)
    grouped = [LengthGroupedSampler(range(n), lengths, batch, num_replicas=world, rank=r, seed=7) for r in range(world)]
    shards = [list(s) for s in grouped]
    per_rank = -(-n // world)
    assert all(len(shard) == per_rank == len(s) for shard, s in zip(shards, grouped))
    drawn = [i for shard in shards for i in shard]
    assert sorted(set(drawn)) == list(range(n)) and len(drawn) - n == per_rank * world - n  # only padding repeats

    plain = [ResumableSampler(range(n), num_replicas=world, rank=r, seed=7) for r in range(world)]
    grouped_pad = padded_fraction([b for s in grouped for b in rank_batches(s, batch)], lengths)
    plain_pad = padded_fraction([b for s in plain for b in rank_batches(s, batch)], lengths)
    assert grouped_pad < plain_pad / 4, (grouped_pad, plain_pad)


def test_ranks_of_one_step_hold_similar_lengths_and_the_longest_batch_comes_first():
    n, batch, world = 800, 4, 2
    lengths = random_lengths(n, seed=1)
    batches = [rank_batches(LengthGroupedSampler(range(n), lengths, batch, num_replicas=world, rank=r, seed=3), batch)
               for r in range(world)]
    assert max(lengths) in [lengths[i] for i in batches[0][0] + batches[1][0]]
    # the two ranks' batches of a step are neighbours in one sorted mega-batch
    gaps = [abs(max(lengths[i] for i in a) - max(lengths[i] for i in b)) for a, b in zip(*batches)]
    spread = max(lengths) - min(lengths)
    assert sum(gaps) / len(gaps) < spread / 20


def test_batches_come_in_shuffled_order_not_a_repeating_length_curriculum():
    """Within a sorted mega-batch the batches run longest to shortest; lit-lora shuffles them (longest batch still
    first), so the batch lengths of an epoch do not fall step after step."""
    n, batch = 4000, 8
    lengths = random_lengths(n, seed=2)
    sampler = LengthGroupedSampler(range(n), lengths, batch, seed=5)
    longest = [max(lengths[i] for i in b) for b in rank_batches(sampler, batch)]
    assert longest[0] == max(lengths)
    falls = sum(a > b for a, b in zip(longest[1:], longest[2:])) / (len(longest) - 2)
    assert 0.35 < falls < 0.65, falls  # unshuffled mega-batches: nearly every step falls
    assert sampler.mega_batch_mult == 4000 // (4 * batch)  # a quarter of the epoch per mega-batch (cap 200)
    assert padded_fraction(rank_batches(sampler, batch), lengths) < 0.01


def step_rows(batch: int, world: int, accumulation: int, n: int, lengths: list[int]) -> list[set[int]]:
    """The rows of each optimizer step: ``accumulation`` micro-batches of every rank."""
    samplers = [LengthGroupedSampler(range(n), lengths, batch, num_replicas=world, rank=r, seed=9,
                                     accumulation=accumulation) for r in range(world)]
    micro = [rank_batches(s, batch) for s in samplers]
    return [{i for rank in micro for b in rank[s:s + accumulation] for i in b}
            for s in range(0, len(micro[0]), accumulation)]


@pytest.mark.parametrize("batch, world, accumulation", [(4, 1, 2), (2, 1, 4), (4, 2, 1), (2, 2, 2), (1, 2, 4)])
def test_an_optimizer_step_holds_the_same_rows_however_it_is_split(batch, world, accumulation):
    """8 rows a step, as one batch, as micro-batches of gradient accumulation or over ranks: the same rows in every
    step (the last, ragged step included), so a smaller batch with accumulation trains the same run."""
    n = 1002  # 125 steps of 8 rows and one of 2, divisible by the world (no DistributedSampler padding)
    lengths = random_lengths(n, seed=4)
    expected = step_rows(8, 1, 1, n, lengths)
    assert len(expected) == 126 and len(expected[-1]) == 2
    assert step_rows(batch, world, accumulation, n, lengths) == expected


def test_a_step_is_split_into_micro_batches_longest_first_and_pads_no_more():
    n, lengths = 1000, random_lengths(1000, seed=6)
    whole = LengthGroupedSampler(range(n), lengths, 8, seed=1)
    split = LengthGroupedSampler(range(n), lengths, 4, seed=1, accumulation=2)
    assert list(split) == list(whole)  # one rank: a step's rows in the same order, cut in two
    assert padded_fraction(rank_batches(split, 4), lengths) <= padded_fraction(rank_batches(whole, 8), lengths)


def test_order_depends_on_seed_and_epoch_only():
    lengths = random_lengths(300)
    a = LengthGroupedSampler(range(300), lengths, 8, seed=5)
    b = LengthGroupedSampler(range(300), lengths, 8, seed=5)
    random.seed(123)  # the global RNG plays no part
    first = list(a)
    random.seed(999)
    assert list(b) == first
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    assert list(LengthGroupedSampler(range(300), lengths, 8, seed=6)) != first



@pytest.mark.parametrize("rank", [0, 1])
def test_mid_epoch_resume_continues_after_the_last_trained_batch(rank):
    n, batch, world = 250, 4, 2
    lengths = random_lengths(n, seed=2)
    rows = list(range(n))

    def loader():
        return ResumableDataLoader(rows, batch_size=batch, seed=11, num_replicas=world, rank=rank, lengths=lengths,
                                   collate_fn=list)

    uninterrupted = loader()
    uninterrupted.sampler.set_epoch(2)
    expected = list(uninterrupted)

    interrupted = loader()
    interrupted.sampler.set_epoch(2)
    interrupted.trainer = fake_trainer(batches_done=5)
    state = interrupted.state_dict()
    assert state["order"] == "length_grouped_shuffled" and state["epoch"] == 2

    resumed = loader()
    resumed.load_state_dict(state)
    assert list(resumed) == expected[5:]
    assert list(resumed) == expected  # the following iteration is the whole epoch again


def test_resume_refuses_a_different_order():
    lengths = random_lengths(40)
    grouped = ResumableDataLoader(list(range(40)), batch_size=4, seed=0, lengths=lengths)
    grouped.trainer = fake_trainer(3)
    plain = ResumableDataLoader(list(range(40)), batch_size=4, seed=0)
    with pytest.raises(CheckpointSettingsMismatch, match="group_by_length"):
        plain.load_state_dict(grouped.state_dict())
    earlier = {**grouped.state_dict(), "order": "length_grouped"}  # the unshuffled order of earlier releases
    with pytest.raises(CheckpointSettingsMismatch, match="drew a length_grouped batch order.*draws that order the same way"):
        ResumableDataLoader(list(range(40)), batch_size=4, seed=0, lengths=lengths).load_state_dict(earlier)


def test_resume_refuses_another_accumulation_of_grouped_steps():
    lengths = random_lengths(40)

    def loader(**kwargs):
        return ResumableDataLoader(list(range(40)), batch_size=4, seed=0, lengths=lengths, collate_fn=list, **kwargs)

    written = loader(accumulation=2)
    written.trainer = fake_trainer(2)
    with pytest.raises(CheckpointSettingsMismatch, match="steps of 2 micro-batches, this run into steps of 1.*"
                                                         "accumulate_grad_batches"):
        loader().load_state_dict(written.state_dict())
    same = loader(accumulation=2)
    same.load_state_dict(written.state_dict())
    assert list(same) == list(loader(accumulation=2))[2:]


def test_lengths_must_match_the_rows():
    with pytest.raises(ValueError, match="3 lengths for 4 rows"):
        LengthGroupedSampler(range(4), [1, 2, 3], 2)


def test_datamodule_option_groups_the_tokenised_rows(tiny_model):
    from lit_lora.data import MultiNLIDataModule

    def batches(group: bool) -> list:
        dm = MultiNLIDataModule(tokenizer_name_or_path=tiny_model("roberta"), batch_size=8, group_by_length=group)
        dm.setup("fit")
        return list(dm.train_dataloader())

    grouped, plain = batches(True), batches(False)
    assert sum(len(b["labels"]) for b in grouped) == sum(len(b["labels"]) for b in plain) > 0

    def pad(bs):
        return sum(int((b["attention_mask"] == 0).sum()) for b in bs) / sum(b["attention_mask"].numel() for b in bs)

    assert pad(grouped) < pad(plain) / 2, (pad(grouped), pad(plain))
    assert grouped[0]["input_ids"].shape[1] == max(b["input_ids"].shape[1] for b in grouped)  # longest first
