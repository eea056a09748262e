"""Tasks: the registry, well-formed items, equal-length IOI pairs, chat and image items."""

import pytest
import torch

from headprobe.errors import TaskError, UnknownTaskError
from headprobe.inputs import Chat, ImagePrompt, Text, encode, encode_prompts, tokenize_prompts
from headprobe.tasks import get_task, list_tasks, task_modules
from headprobe.tasks.base import Task, TaskItem, answer_token_ids, single_token_id

# Names of one character length each, so that IOI pairs have equal length under the char
# tokenizer whatever names are swapped.
SAME_LENGTH_NAMES = ("Anna", "Mary", "John", "Paul", "Kate", "Emma", "Jack", "Lucy")


# plain-string prompts; niah: tests/test_niah.py; the safety tasks: tests/test_harmful_refusal.py;
# ocr_read and bracket_copy: tests/test_ocr_read.py
TEXT_TASKS = ("facts", "ioi", "induction_copy", "temporal_facts", "knowledge_conflict")


def test_every_registered_task_builds_well_formed_items():
    assert set(list_tasks()) == {*TEXT_TASKS, "niah", "harmful_refusal", "harmless_answer",
                                 "successor_increment", "ocr_read", "bracket_copy"} == set(
        task_modules())
    for name in list_tasks():
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name and len(task) > 0
    for name in TEXT_TASKS:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name and len(task) > 0
        assert task.prompts == [item.prompt for item in task.items]
        for item in task.items:
            assert isinstance(item, TaskItem)
            assert isinstance(item.prompt, str) and item.prompt
            assert item.answer and item.answer.startswith(" ")
            assert not item.prompt.endswith(" ")  # the answer carries the space
            if item.distractor is not None:
                assert item.distractor != item.answer
            if item.corrupt_prompt is not None:
                assert item.corrupt_prompt != item.prompt
    # bare digits continue without a space ("Digits: 4,5,6,7," -> "8"); other sets with one
    for item in get_task("successor_increment").items:
        assert isinstance(item.prompt, str) and item.answer and item.distractor != item.answer
        assert item.answer.startswith(" ") or item.meta["with_space"] is False


def test_unknown_task_names_the_registered_ones():
    with pytest.raises(UnknownTaskError, match="registered tasks: induction_copy"):
        get_task("no_such_task")


def test_task_checks_its_fields():
    with pytest.raises(TaskError, match="no prompts"):
        Task("empty", [])
    with pytest.raises(TaskError, match="judge_fn"):
        Task("f", [TaskItem("a", " b")], judge="function")
    with pytest.raises(TaskError, match="unknown judge"):
        Task("f", [TaskItem("a", " b")], judge="maybe")  # type: ignore[arg-type]
    task = get_task("induction_copy", n=5)
    assert [item.prompt for item in task.subset(2).items] == task.prompts[:2]


@pytest.mark.parametrize("corruption", ["s2", "abc"])
def test_ioi_pairs_have_equal_length_on_the_tiny_tokenizer(tiny_llama, corruption):
    model, spec = tiny_llama
    task = get_task("ioi", n=24, corruption=corruption, names=SAME_LENGTH_NAMES)
    clean = tokenize_prompts(model, task.prompts, spec)
    corrupt = tokenize_prompts(model, [item.corrupt_prompt for item in task.items], spec)
    for item, a, b in zip(task.items, clean, corrupt, strict=True):
        assert len(a) == len(b), item
        assert int((a != b).sum()) > 0
        assert item.answer == f" {item.meta['io']}" and item.distractor == f" {item.meta['s']}"


def test_ioi_refuses_a_tokenizer_without_single_token_names(tiny_llama):
    with pytest.raises(TaskError, match="too few single-token words"):
        get_task("ioi", n=4, model=tiny_llama[0])


@pytest.mark.real
@pytest.mark.parametrize("corruption", ["s2", "abc"])
def test_ioi_pairs_have_equal_length_on_the_real_tokenizer(smol, corruption):
    model, spec = smol
    task = get_task("ioi", n=32, corruption=corruption, model=model)
    clean = tokenize_prompts(model, task.prompts, spec)
    corrupt = tokenize_prompts(model, [item.corrupt_prompt for item in task.items], spec)
    assert all(len(a) == len(b) for a, b in zip(clean, corrupt, strict=True))
    answers, distractors = answer_token_ids(model, task)
    assert distractors is not None and bool((answers != distractors).all())


def test_answer_token_ids_names_the_bad_item(tiny_llama):
    model, _ = tiny_llama
    task = Task("t", [TaskItem("ab", "c", "d"), TaskItem("ab", "cd", "e")])
    with pytest.raises(TaskError, match="item 1 answer 'cd' is 2 tokens"):
        answer_token_ids(model, task)
    answers, distractors = answer_token_ids(model, Task("t", [TaskItem("ab", "c", "d")]))
    assert answers.tolist() == [single_token_id(model, "c")]
    assert distractors is not None and distractors.tolist() == [single_token_id(model, "d")]
    assert answer_token_ids(model, Task("t", [TaskItem("ab", "c")]))[1] is None
    with pytest.raises(TaskError, match="some items have a distractor"):
        answer_token_ids(model, Task("t", [TaskItem("ab", "c", "d"), TaskItem("ab", "e")]))


def test_single_token_id_is_the_answers_one():
    from headprobe import answers
    from headprobe.tasks import base

    assert base.single_token_id is answers.single_token_id


def test_items_may_be_text_chat_or_image_prompts(tiny_llama):
    model, spec = tiny_llama
    chat = Chat([{"role": "user", "content": "Name the capital of France."}],
                spans={"country": "France"})
    image = ImagePrompt("<image> what is this?", [torch.zeros(4, 4, 3, dtype=torch.uint8)])
    task = Task("mixed", [TaskItem(chat, " Paris"), TaskItem(Text("x y", {"y": "y"}), " z"),
                          TaskItem(image, " cat", corrupt_prompt=image)])
    assert task.prompts[0] is chat and task.prompts[2] is image
    encoded = encode_prompts(model, task.prompts[:2], spec)
    assert set(encoded[0].spans) == {"country"} and set(encoded[1].spans) == {"y"}


@pytest.mark.real
def test_chat_task_item_renders_with_smollm2_template(smol):
    model, spec = smol
    item = TaskItem(Chat([{"role": "user", "content": "What is the capital of France?"}],
                         spans={"country": "France"}), answer="Paris")
    encoded = encode(model, item.prompt, spec)
    # SmolLM2's template adds its default system message, then the turn and the header
    assert encoded.text.startswith("<|im_start|>system\n")
    assert encoded.text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                                 "<|im_start|>assistant\n")
    reference = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=True,
        add_generation_prompt=True)
    reference_ids = reference["input_ids"] if hasattr(reference, "keys") else reference
    assert encoded.ids.tolist() == list(reference_ids)
    span = encoded.spans["country"]
    assert model.tokenizer.decode(encoded.ids[span.start:span.stop]).strip() == "France"
    ids = encoded.ids[None]
    with torch.no_grad():  # a short greedy reply: the rendered chat is one the model answers
        for _ in range(8):
            ids = torch.cat([ids, model(ids)[0, -1].argmax().view(1, 1)], dim=1)
    assert item.answer in model.tokenizer.decode(ids[0, len(encoded):])
