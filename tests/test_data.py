"""Data layer: loading/validation, open-unlearning formatting parity, padding, buckets, pairing, slicing."""

import json
import warnings

import numpy as np
import pytest

from cel_jax import data
from cel_jax.data import IGNORE, Cursor, Template, qa

try:
    from conftest import REAL_TOFU, TOFU_FIXTURES, needs_real_tofu
    from conftest_tokenizer import make_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.conftest import REAL_TOFU, TOFU_FIXTURES, needs_real_tofu
    from tests.conftest_tokenizer import make_tokenizer


@pytest.fixture(scope="module")
def tok3():
    return make_tokenizer("llama3")


@pytest.fixture(scope="module")
def tok2():
    return make_tokenizer("llama2")


def target_ids(item):
    return [t for t in item["labels"] if t != IGNORE]


# ---------------------------------------------------------------------------------------------------
# Chat-template path


def test_chat_labels_cover_answer_and_eos_only(tok3):
    item = data.encode_qa(tok3, "Where was Ada born?", "In Kumasi.", "chat")
    ids, labels = item["input_ids"], item["labels"]
    assert len(ids) == len(labels)
    text = tok3.decode(ids)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 10 Apr 2025\n\n"
        "You are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Where was Ada born?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "In Kumasi.<|eot_id|>"
    )
    # Targets = answer tokens + the final <|eot_id|> (the EOS); everything before is masked.
    assert tok3.decode(target_ids(item)) == "In Kumasi.<|eot_id|>"
    n_prompt = labels.count(IGNORE)
    assert labels[:n_prompt] == [IGNORE] * n_prompt and IGNORE not in labels[n_prompt:]
    assert labels[n_prompt:] == ids[n_prompt:]


def test_chat_eos_not_doubled(tok3):
    item = data.encode_qa(tok3, "Q?", "A.", "chat")
    eos = tok3.eos_token_id
    assert item["input_ids"][-1] == eos and item["input_ids"][-2] != eos


def test_chat_system_prompt_options(tok3):
    none = data.encode_qa(tok3, "Q?", "A.", Template(system_prompt=None))
    assert "system" not in tok3.decode(none["input_ids"])
    custom = data.encode_qa(tok3, "Q?", "A.", Template(system_prompt="Be brief.", date_string="1 Jan 2000"))
    text = tok3.decode(custom["input_ids"])
    assert "Be brief.<|eot_id|>" in text and "Today Date: 1 Jan 2000" in text
    # Same targets whatever the system prompt.
    assert target_ids(none) == target_ids(custom)


def test_chat_fewshot_only_last_answer_is_target(tok3):
    item = data.encode_qa(tok3, "Q2?", "A2.", "chat", fewshot=[("Q1?", "A1.")])
    text = tok3.decode(item["input_ids"])
    assert text.count("<|start_header_id|>assistant") == 2
    assert tok3.decode(target_ids(item)) == "A2.<|eot_id|>"


def test_chat_generation_item(tok3):
    train = data.encode_qa(tok3, "Q?", "The answer.", "chat")
    gen = data.encode_qa(tok3, "Q?", "The answer.", "chat", generate=True)
    n_prompt = train["labels"].count(IGNORE)
    assert gen["input_ids"] == train["input_ids"][:n_prompt]
    assert tok3.decode(gen["input_ids"]).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert gen["labels"] == train["input_ids"]  # the whole conversation, unmasked (reference)
    assert gen["answer"] == "The answer."


def test_chat_too_long_error_and_truncate(tok3):
    n = len(data.encode_qa(tok3, "Q?", "A fairly long answer here.", "chat")["input_ids"])
    assert data.encode_qa(tok3, "Q?", "A fairly long answer here.", "chat", max_length=n)
    with pytest.raises(ValueError, match=r"exceeds max_length=\d+"):
        data.encode_qa(tok3, "Q?", "A fairly long answer here.", "chat", max_length=n - 1)
    cut = data.encode_qa(
        tok3, "Q?", "A fairly long answer here.", "chat", max_length=n - 3, on_too_long="truncate"
    )
    assert len(cut["input_ids"]) == n - 2 and cut["input_ids"][-1] == tok3.eos_token_id  # cut, then EOS


def test_apply_chat_template_dict_results_are_handled(tok3):
    class DictTok:  # transformers 5 returns a BatchEncoding unless return_dict=False is honoured
        def __init__(self, tok):
            self._tok = tok
            self.chat_template, self.eos_token_id = tok.chat_template, tok.eos_token_id

        def apply_chat_template(self, chat, **kw):
            kw["return_dict"] = True
            return self._tok.apply_chat_template(chat, **kw)

    plain = data.encode_qa(tok3, "Q?", "A.", "chat")
    assert data.encode_qa(DictTok(tok3), "Q?", "A.", "chat") == plain
    assert data.as_ids({"input_ids": [[1, 2, 3]]}) == [1, 2, 3]
    assert data.as_ids(np.array([4, 5])) == [4, 5]
    with pytest.raises(ValueError, match="batch of 2"):
        data.as_ids([[1], [2]])


def test_no_target_tokens_warn_or_error(tok3):
    tok = make_tokenizer("llama3")  # a template whose generation prompt outgrows the conversation
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{{ eos_token if m['role'] == 'assistant' }}{% endfor %}"
        "{% if add_generation_prompt %}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endif %}"
    )
    with pytest.warns(UserWarning, match="no target tokens"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="prompt tokens are not a prefix")
        item = data.encode_qa(tok, "Q", "A", Template(system_prompt=None))
    assert target_ids(item) == [] and len(item["labels"]) == len(item["input_ids"])
    with pytest.raises(ValueError, match="no target tokens"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.encode_qa(tok, "Q", "A", Template(system_prompt=None), on_no_target="error")


def test_chat_path_needs_a_chat_template(tok2):
    with pytest.raises(ValueError, match="no chat_template"):
        data.encode_qa(tok2, "Q?", "A.", "chat")


# ---------------------------------------------------------------------------------------------------
# Tag-template path


def test_llama2_tags_no_space_border(tok2):
    item = data.encode_qa(tok2, "Where was Ada born?", "In Kumasi.", "llama2_chat")
    assert tok2.decode(item["input_ids"]) == "<s>[INST] Where was Ada born? [/INST]In Kumasi.</s>"
    assert tok2.decode(target_ids(item)) == "In Kumasi.</s>"
    assert item["input_ids"].count(tok2.eos_token_id) == 1  # EOS appended once


def test_base_tags_fewshot_and_system(tok2):
    t = Template(
        apply_chat_template=False,
        system_prompt_with_special_tokens="SYS|",
        user_start_tag="Question: ",
        user_end_tag="\n",
        asst_start_tag="Answer:\n",
        asst_end_tag="\n\n",
    )
    item = data.encode_qa(tok2, "Q2?", "A2.", t, fewshot=[("Q1?", "A1.")])
    assert (
        tok2.decode(item["input_ids"])
        == "<s>SYS|Question: Q1?\nAnswer:\nA1.\n\nQuestion: Q2?\nAnswer:\nA2.</s>"
    )
    assert tok2.decode(target_ids(item)) == "A2.</s>"
    assert data.tag_prompt(t, [("Q?", "A.")]) == "SYS|Question: Q?\nAnswer:\n"


def test_tag_border_space_follows_reference(tok2):
    # "Answer: " + "A2.": byte-level BPE merges the space into " A", so the prompt's tokens are not a
    # prefix of the conversation's. The reference masks len(prompt_ids) tokens anyway; so do we (and warn).
    prompt_ids = tok2("Question: Q2?\nAnswer: ")["input_ids"]
    chat_ids = tok2("Question: Q2?\nAnswer: A2.")["input_ids"] + [tok2.eos_token_id]
    assert chat_ids[: len(prompt_ids)] != prompt_ids
    with pytest.warns(UserWarning, match="not a prefix"):
        item = data.encode_qa(tok2, "Q2?", "A2.", "qa_base")
    assert item["input_ids"] == chat_ids
    assert item["labels"] == [IGNORE] * len(prompt_ids) + chat_ids[len(prompt_ids) :]


def test_tag_truncation_like_reference(tok2):
    q, a = "Where was the painter born?", "The painter was born in a small harbour town."
    full = data.encode_qa(tok2, q, a, "qa_base")["input_ids"]
    m = len(full) - 4
    with pytest.raises(ValueError, match="exceeds max_length"):
        data.encode_qa(tok2, q, a, "qa_base", max_length=m)
    cut = data.encode_qa(tok2, q, a, "qa_base", max_length=m, on_too_long="truncate")
    # tokenizer truncation to max_length, then EOS appended: max_length + 1 tokens (reference quirk).
    assert cut["input_ids"] == full[:m] + [tok2.eos_token_id]


def test_template_presets_and_validation():
    assert data.make_template(None) == Template()
    assert data.make_template({"system_prompt": None}).system_prompt is None
    assert data.TEMPLATES["llama2_chat"].asst_start_tag == ""
    with pytest.raises(ValueError, match="unknown template"):
        data.make_template("nope")
    with pytest.raises(ValueError, match="unknown template fields"):
        data.make_template({"sytem_prompt": "x"})


def test_encode_rows_with_answer_lists(tok3):
    rows = [{"question": "Q?", "answer": "A.", "perturbed_answer": ["B.", "C."]}]
    items = data.encode_qa_rows(tok3, rows, answer_key="perturbed_answer")
    assert len(items) == 1 and len(items[0]) == 2
    assert tok3.decode(target_ids(items[0][1])) == "C.<|eot_id|>"


def test_pad_id_falls_back_to_eos():
    assert data.pad_id_of(make_tokenizer("llama3", pad=False)) == make_tokenizer("llama3").eos_token_id
    assert data.pad_id_of(make_tokenizer("llama3")) == make_tokenizer("llama3").pad_token_id


# ---------------------------------------------------------------------------------------------------
# MUSE pretraining / completion items


def test_completion_prefix_masking_and_truncation(tok2):
    item = data.encode_completion(
        tok2, "Once upon", "a time there was a clock.", max_length=100, insert_space=True
    )
    n_prefix = len(tok2("Once upon")["input_ids"])
    assert tok2.decode(item["input_ids"]) == "<s>Once upon a time there was a clock."
    assert item["labels"][:n_prefix] == [IGNORE] * n_prefix
    assert item["labels"][n_prefix:] == item["input_ids"][n_prefix:]
    assert tok2.eos_token_id not in item["input_ids"]  # no EOS for pretraining items
    short = data.encode_completion(tok2, "Once upon", "a time there was a clock.", max_length=3)
    assert len(short["input_ids"]) == n_prefix + 3
    empty = data.encode_completion(tok2, "", "Some text.", max_length=100)
    assert empty["labels"][0] == IGNORE and IGNORE not in empty["labels"][1:]  # only BOS masked
    gen = data.encode_completion(tok2, "Once upon", "a time.", max_length=100, generate=True)
    assert gen["input_ids"] == tok2("Once upon")["input_ids"] and gen["answer"] == "a time."


def test_pretraining_chunks_roundtrip(tok2):
    texts = ["The first article is about clocks and bridges.", "The second one talks about harbours."]
    chunks = data.chunk_texts(tok2, texts, max_length=7)
    ids = tok2("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    assert len(chunks) == len(ids) // 7 + (len(ids) % 7 > 0)
    assert "".join(chunks) == "\n\n".join(texts)
    items = data.encode_pretraining(tok2, texts, max_length=7)
    assert all(it["input_ids"][0] == tok2.bos_token_id and it["labels"][0] == IGNORE for it in items)
    assert all(len(it["input_ids"]) <= 8 for it in items)


# ---------------------------------------------------------------------------------------------------
# Padding, masks, buckets


def test_right_and_left_padding():
    items = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    r = data.pad_items(items, pad_id=0, length=4, side="right")
    np.testing.assert_array_equal(r["input_ids"], [[5, 6, 7, 0], [8, 0, 0, 0]])
    np.testing.assert_array_equal(r["labels"], [[IGNORE, 6, 7, IGNORE], [8, IGNORE, IGNORE, IGNORE]])
    np.testing.assert_array_equal(r["attention_mask"], [[1, 1, 1, 0], [1, 0, 0, 0]])
    left = data.pad_items(items, pad_id=0, length=4, side="left", keys=("input_ids",))
    np.testing.assert_array_equal(left["input_ids"], [[0, 5, 6, 7], [0, 0, 0, 8]])
    np.testing.assert_array_equal(left["attention_mask"], [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert "labels" not in left and left["input_ids"].dtype == np.int32
    with pytest.raises(ValueError, match="side"):
        data.pad_items(items, 0, length=4, side="middle")
    with pytest.raises(ValueError, match="more than the padded length"):
        data.pad_items(items, 0, length=2)


def test_compat_mask_hides_real_eos_when_pad_is_eos(tok3):
    tok = make_tokenizer("llama3", pad=False)
    pad = data.pad_id_of(tok)  # = EOS = <|eot_id|>
    items = [data.encode_qa(tok, "Q?", "A.", "chat"), data.encode_qa(tok, "Longer question?", "B.", "chat")]
    batch = data.collate(items, pad, data.make_buckets(128, min_length=16))
    compat = data.compat_attention_mask(batch["input_ids"], pad)
    n_eos = [it["input_ids"].count(tok.eos_token_id) for it in items]  # system, user, final turns
    assert n_eos == [3, 3]
    np.testing.assert_array_equal(batch["attention_mask"].sum(1), [len(it["input_ids"]) for it in items])
    np.testing.assert_array_equal(compat.sum(1), batch["attention_mask"].sum(1) - np.array(n_eos))
    eos_BT = batch["input_ids"] == tok.eos_token_id
    assert (compat[eos_BT] == 0).all() and (compat[~eos_BT] == batch["attention_mask"][~eos_BT]).all()
    switched = data.collate(items, pad, data.make_buckets(128, min_length=16), compat_mask=True)
    np.testing.assert_array_equal(switched["attention_mask"], compat)


def test_bucket_choice():
    assert data.make_buckets(512) == (32, 64, 128, 256, 512)
    assert data.make_buckets(300, min_length=64) == (64, 128, 256, 300)
    assert data.make_buckets(200, multiple=64) == (64, 128, 192, 200)
    b = data.make_buckets(512)
    assert [data.pick_bucket(n, b) for n in (1, 32, 33, 64, 65, 512)] == [32, 32, 64, 64, 128, 512]
    with pytest.raises(ValueError, match="largest bucket 512"):
        data.pick_bucket(513, b)


def test_batch_never_exceeds_its_bucket():
    rng = np.random.default_rng(0)
    buckets = data.make_buckets(256, multiple=64)
    for _ in range(20):
        items = [{"input_ids": [1] * n, "labels": [1] * n} for n in rng.integers(1, 257, size=5)]
        batch = data.collate(items, 0, buckets)
        T = batch["input_ids"].shape[1]
        longest = max(len(it["input_ids"]) for it in items)
        assert (
            T in buckets
            and longest <= T
            and (T == min(buckets) or longest > max(x for x in buckets if x < T))
        )


def test_zero_weight_rows_have_no_targets():
    items = [{"input_ids": [1, 2], "labels": [IGNORE, 2]}] * 3
    batch = data.collate(items, 0, (8,), weight=np.array([1, 1, 0]))
    assert (batch["labels"][2] == IGNORE).all() and (batch["labels"][0, 1] == 2)
    assert batch["attention_mask"][2].sum() == 2  # still a real sequence: no all-masked rows
    np.testing.assert_array_equal(batch["weight"], [1, 1, 0])


# ---------------------------------------------------------------------------------------------------
# Pairing, cursor, host slicing


def run_pairs(n_f, n_r, bs, seed, cursor, steps):
    out = []
    for _ in range(steps):
        f, r, w, cursor = data.next_pairs(n_f, n_r, bs, seed, cursor)
        out.append((f, r, w, cursor))
    return out


def test_pairing_is_deterministic_and_epoch_covers_forget_set():
    a = run_pairs(10, 7, 4, seed=3, cursor=Cursor(), steps=6)
    b = run_pairs(10, 7, 4, seed=3, cursor=Cursor(), steps=6)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x[:3], y[:3], strict=True):
            np.testing.assert_array_equal(u, v)
    # Epoch 0 = 3 steps (ceil(10/4)); the last one has 2 zero-weight copies.
    f0 = np.concatenate([s[0][s[2] > 0] for s in a[:3]])
    assert sorted(f0.tolist()) == list(range(10))
    np.testing.assert_array_equal(a[2][2], [1, 1, 0, 0])
    assert a[2][3] == Cursor(1, 0) and a[0][3] == Cursor(0, 4)
    # Partners are a function of (seed, epoch, forget index), in range.
    partners = data.retain_partners(10, 7, 3, 0)
    for f, r, _, _ in a[:3]:
        np.testing.assert_array_equal(r, partners[f])
    assert not np.array_equal(data.epoch_order(10, 3, 0), data.epoch_order(10, 3, 1))
    assert not np.array_equal(data.epoch_order(10, 3, 0), data.epoch_order(10, 4, 0))
    run = run_pairs(10, 7, 4, seed=9, cursor=Cursor(), steps=30)
    assert all(((r >= 0) & (r < 7)).all() for _, r, _, _ in run)


def test_pairing_resumes_exactly():
    full = run_pairs(10, 7, 4, seed=1, cursor=Cursor(), steps=8)
    resumed = run_pairs(10, 7, 4, seed=1, cursor=full[3][3], steps=4)
    for x, y in zip(full[4:], resumed, strict=True):
        for u, v in zip(x[:3], y[:3], strict=True):
            np.testing.assert_array_equal(u, v)
        assert x[3] == y[3]
    # A cursor saved as JSON (Orbax JsonSave) round-trips.
    assert Cursor(*json.loads(json.dumps(full[3][3]))) == full[3][3]


def test_partner_independent_of_batch_size():
    p = data.retain_partners(12, 5, 0, 2)
    for bs in (3, 4, 12):
        cursor, seen = Cursor(2, 0), {}
        for _ in range(data.steps_per_epoch(12, bs)):
            f, r, w, cursor = data.next_pairs(12, 5, bs, 0, cursor)
            seen.update({int(i): int(j) for i, j, wi in zip(f, r, w, strict=True) if wi > 0})
        assert seen == {i: int(p[i]) for i in range(12)}


def test_sequential_batches():
    seq = data.sequential_batches(5, 2)
    assert [i.tolist() for i, _ in seq] == [[0, 1], [2, 3], [4, 4]] and seq[-1][1].tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------------
# Loading and validation


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validation_errors_name_file_line_field(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}, {"question": "q"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: missing field 'answer'"):
        data.load_qa(tmp_path, "bad")
    write_jsonl(tmp_path / "empty_answer.jsonl", [{"question": "q", "answer": "  "}])
    with pytest.raises(ValueError, match=r"line 1: field 'answer' must be a non-empty string"):
        data.load_qa(tmp_path, "empty_answer")
    pert = {"question": "q", "answer": "a", "paraphrased_answer": "p", "perturbed_answer": ["x", "y"]}
    write_jsonl(tmp_path / "f_perturbed.jsonl", [pert, {**pert, "perturbed_answer": "x"}])
    with pytest.raises(
        ValueError, match=r"f_perturbed\.jsonl, line 2: field 'perturbed_answer' must be a non-empty list"
    ):
        data.load_qa(tmp_path, "f_perturbed")
    write_jsonl(tmp_path / "g_perturbed.jsonl", [pert, {**pert, "perturbed_answer": ["x"]}])
    with pytest.raises(ValueError, match=r"line 2: field 'perturbed_answer' has 1 entries but line 1 has 2"):
        data.load_qa(tmp_path, "g_perturbed")
    write_jsonl(tmp_path / "h_perturbed.jsonl", [{"question": "q", "answer": "a", "perturbed_answer": ["x"]}])
    with pytest.raises(ValueError, match="missing field 'paraphrased_answer'"):
        data.load_qa(tmp_path, "h_perturbed")
    (tmp_path / "nothing.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"nothing\.jsonl: the data set is empty"):
        data.load_qa(tmp_path, "nothing")
    (tmp_path / "broken.jsonl").write_text('{"question": "q", "answer": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 2: invalid JSON"):
        data.load_qa(tmp_path, "broken")
    with pytest.raises(ValueError, match="line 1: missing field 'paraphrased_question'"):
        data.load_qa(tmp_path, "bad", extra_fields=["paraphrased_question"])
    with pytest.raises(ValueError, match="the data set is empty"):
        data.load_qa([])
    with pytest.raises(ValueError, match="row 0: expected a JSON object"):
        data.load_qa(["not a dict"])


def test_jsonl_errors_number_lines_alike(tmp_path):
    """A broken JSON line and a row missing a field name the same 1-based line of the file (blank lines
    count), with the file's path; sources without lines (JSON arrays, lists) name the 0-based row."""
    good = json.dumps({"question": "q", "answer": "a"})
    (tmp_path / "syntax.jsonl").write_text(f"{good}\n\n{{oops\n")
    (tmp_path / "field.jsonl").write_text(f"{good}\n\n{json.dumps({'question': 'q'})}\n")
    for name, problem in (("syntax", "invalid JSON"), ("field", "missing field 'answer'")):
        with pytest.raises(ValueError) as err:
            data.load_qa(tmp_path, name)
        assert str(err.value).startswith(f"{tmp_path / name}.jsonl, line 3: {problem}"), str(err.value)
    (tmp_path / "arr.json").write_text(json.dumps([{"question": "q", "answer": "a"}, {"question": "q"}]))
    with pytest.raises(ValueError, match=r"arr\.json, row 1: missing field 'answer'"):
        data.load_qa(tmp_path, "arr")
    with pytest.raises(ValueError, match=r"<list of rows>, row 1: missing field 'answer'"):
        data.load_qa([{"question": "q", "answer": "a"}, {"question": "q"}])
    rows, origin, lines = qa._load_located(tmp_path, "field", "train", None)  # raw rows, before validation
    assert rows == [{"question": "q", "answer": "a"}, {"question": "q"}] and lines == [1, 3]
    assert origin == str(tmp_path / "field.jsonl")


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tried"):
        data.load_qa(tmp_path, "forget01")
    with pytest.raises(ValueError, match="give a config name"):
        data.load_qa(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_qa(tmp_path / "missing_dir", "forget01")
    with pytest.raises(ValueError, match="unsupported data source"):
        data.load_qa(42)


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown TOFU forget split 'forget02'"):
        data.tofu_splits("forget02")
    with pytest.raises(ValueError, match="unknown MUSE config"):
        data.load_muse("x", "nope", "forget")


def test_other_sources(tmp_path, monkeypatch):
    import datasets

    rows = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]
    assert data.load_qa(rows) == rows
    assert data.load_qa(datasets.Dataset.from_list(rows)) == rows
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    assert data.load_qa(dd, split="train") == rows
    with pytest.raises(ValueError, match="no split 'test'"):
        data.load_qa(dd, split="test")
    (tmp_path / "arr.json").write_text(json.dumps(rows))
    assert data.load_qa(tmp_path / "arr.json") == rows
    assert data.load_qa(tmp_path, "arr") == rows
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)  # never the network in tests
    monkeypatch.setattr(qa, "_hub_reachable", lambda: True)  # no DNS query either
    monkeypatch.delenv("CEL_JAX_TOFU_DIR", raising=False)  # else "locuslab/TOFU" reads that local copy
    assert data.load_qa("locuslab/TOFU", "forget01") == rows
    assert calls == [("locuslab/TOFU", "forget01", "train")]
    with pytest.raises(FileNotFoundError):
        data.load_qa("locuslab/TOFU", "forget01", hub=False)


def test_muse_layout_folders(tmp_path):
    write_jsonl(tmp_path / "raw" / "forget.jsonl", [{"text": "A news article."}])
    write_jsonl(tmp_path / "verbmem" / "forget.jsonl", [{"prompt": "Once", "gt": "upon a time"}])
    write_jsonl(tmp_path / "knowmem" / "retain_qa_icl.jsonl", [{"question": "q", "answer": "a"}])
    write_jsonl(tmp_path / "privleak" / "holdout.jsonl", [{"text": "Held out."}])
    assert data.load_muse(tmp_path, "raw", "forget") == [{"text": "A news article."}]
    assert data.load_muse(tmp_path, "verbmem", "forget")[0]["gt"] == "upon a time"
    assert data.load_muse(tmp_path, "knowmem", "retain_qa_icl")[0]["answer"] == "a"
    assert data.load_text(tmp_path, "privleak", "holdout")[0]["text"] == "Held out."
    write_jsonl(tmp_path / "verbmem" / "retain.jsonl", [{"prompt": "Once"}])
    with pytest.raises(ValueError, match=r"retain\.jsonl, line 1: missing field 'gt'"):
        data.load_muse(tmp_path, "verbmem", "retain")


def test_offline_hub_fails_fast_with_one_clear_line(monkeypatch):
    """No network and no cached copy: datasets runs in offline mode (no retries) and the error is one line
    that says how to point at a local folder. The loader is a fake: tests never touch the network."""
    import datasets
    import huggingface_hub.constants

    seen = []

    def offline_load_dataset(name, config, split):
        seen.append((datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE))
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline_load_dataset)
    monkeypatch.setattr(qa, "_hub_reachable", lambda: False)
    monkeypatch.delenv("CEL_JAX_TOFU_DIR", raising=False)
    before = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    with pytest.raises(FileNotFoundError) as err:
        data.load_qa("locuslab/TOFU", "forget01")
    msg = str(err.value)
    assert seen == [(True, True)]  # offline mode while loading: a cached copy loads, no retry storm
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == before  # restored
    assert "\n" not in msg and err.value.__cause__ is None and err.value.__suppress_context__
    assert "'locuslab/TOFU' config 'forget01'" in msg and "no network" in msg
    for how in (
        "--config.data.source=/path/to/tofu",
        "--config.data_dir=/path/to/tofu",
        "CEL_JAX_TOFU_DIR=/path",
    ):
        assert how in msg, how

    # reachable host, but the connection fails: the same one line, with the hub's reason
    def failing_load_dataset(name, config, split):
        seen.append((datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE))
        raise ConnectionError(
            "Couldn't reach 'muse-bench/MUSE-News' on the Hub (LocalEntryNotFoundError)\nmore"
        )

    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    monkeypatch.setattr(qa, "_hub_reachable", lambda: True)
    with pytest.raises(
        FileNotFoundError, match=r"\(ConnectionError: Couldn't reach .*LocalEntryNotFoundError\)"
    ) as err:
        data.load_muse("muse-bench/MUSE-News", "raw", "forget")
    assert seen[-1] == before and "\n" not in str(err.value)
    assert "--config.data_dir=/path/to/folder" in str(err.value) and "CEL_JAX_TOFU_DIR" not in str(err.value)

    # any other error of the loader is not disguised as a network problem
    def broken_load_dataset(name, config, split):
        raise ValueError("BuilderConfig 'forget02' not found")

    monkeypatch.setattr(datasets, "load_dataset", broken_load_dataset)
    with pytest.raises(ValueError, match="forget02"):
        data.load_qa("locuslab/TOFU", "forget02")


def test_hub_reachability_probe(monkeypatch):
    import socket

    def no_dns(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    probe = qa._hub_reachable.__wrapped__  # uncached
    assert probe() is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # the proxy resolves names
    assert probe() is True
    monkeypatch.delenv("HTTPS_PROXY")
    asked = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port: asked.append(host) or [])
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example:8443")
    assert probe() is True and asked == ["hf-mirror.example"]


def test_tofu_location_from_the_environment(monkeypatch):
    from cel_jax.config_base import unlearn_config
    from cel_jax.evaluation import tofu

    monkeypatch.delenv("CEL_JAX_TOFU_DIR", raising=False)
    assert data.tofu_dir() is None and data.tofu_source() == "locuslab/TOFU" == data.TOFU_HUB
    assert tofu.default_config().data_dir == "locuslab/TOFU"
    assert unlearn_config().data.source == "locuslab/TOFU"
    monkeypatch.setenv("CEL_JAX_TOFU_DIR", "  ")
    assert data.tofu_dir() is None
    monkeypatch.setenv("CEL_JAX_TOFU_DIR", str(TOFU_FIXTURES))
    assert data.tofu_dir() == TOFU_FIXTURES and data.tofu_source() == str(TOFU_FIXTURES)
    assert tofu.default_config().data_dir == str(TOFU_FIXTURES)
    # the training configs' "locuslab/TOFU" reads the local copy; hub=True still asks the hub
    import datasets

    def no_hub(*a, **k):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.setattr(qa, "_hub_reachable", lambda: True)  # no DNS query
    assert data.load_qa("locuslab/TOFU", "forget01") == data.load_qa(TOFU_FIXTURES, "forget01")
    with pytest.raises(AssertionError, match="the hub was asked"):
        data.load_qa("locuslab/TOFU", "forget01", hub=True)
    monkeypatch.setenv("CEL_JAX_TOFU_DIR", str(TOFU_FIXTURES / "missing"))
    with pytest.raises(FileNotFoundError, match="missing' .*named by CEL_JAX_TOFU_DIR.* does not exist"):
        data.load_qa("locuslab/TOFU", "forget01")


def _check_tofu_layout(folder, forget_split="forget01"):
    """TOFU's relations between its files (what the loaders and benchmarks rely on); returns the sizes."""
    names = data.tofu_splits(forget_split)
    d = {k: data.load_qa(folder, v) for k, v in names.items()}
    qa_of = lambda rows: [(r["question"], r["answer"]) for r in rows]  # noqa: E731
    n_full, n_forget = len(d["full"]), len(d["forget"])
    assert qa_of(d["forget"]) == qa_of(d["full"][n_full - n_forget :])  # forgetXX = the last rows of full
    assert qa_of(d["retain"]) == qa_of(d["full"][: n_full - n_forget])  # retainXX = the first rows
    assert qa_of(d["forget_perturbed"]) == qa_of(d["forget"])
    assert qa_of(d["retain_perturbed"]) == qa_of(d["full"][: len(d["retain_perturbed"])])
    assert len(d["holdout"]) == n_forget and not set(qa_of(d["holdout"])) & set(qa_of(d["full"]))
    pert = data.load_qa(folder, names["forget_perturbed"], extra_fields=["paraphrased_question"])
    data.load_qa(folder, "retain_perturbed", extra_fields=["paraphrased_question"])
    for row in pert:
        assert len(row["perturbed_answer"]) == 5 and row["paraphrased_answer"] not in row["perturbed_answer"]
    for name in ("real_authors", "world_facts"):
        plain = data.load_qa(folder, name, extra_fields=[f"option{i}" for i in range(1, 5)])
        opts = data.load_qa(folder, f"{name}_perturbed")
        assert qa_of(plain) == qa_of(opts)
        for p, o in zip(plain, opts, strict=True):
            options = [p[f"option{i}"] for i in range(1, 5)]
            assert len(o["perturbed_answer"]) == 3 and p["answer"] in options
            assert sorted(o["perturbed_answer"] + [o["answer"]]) == sorted(options)
    return {k: len(v) for k, v in d.items()}


def test_fixture_tofu_has_the_real_layout():
    sizes = _check_tofu_layout(TOFU_FIXTURES)
    assert sizes == dict(
        full=24,
        forget=8,
        retain=16,
        holdout=8,
        forget_perturbed=8,
        retain_perturbed=8,
        real_authors_perturbed=6,
        world_facts_perturbed=6,
    )
    for row in data.load_qa(TOFU_FIXTURES, "retain_perturbed") + data.load_qa(
        TOFU_FIXTURES, "forget01_perturbed"
    ):
        assert len(set(row["perturbed_answer"])) == 5


@needs_real_tofu
def test_real_tofu_files_load():
    names = data.tofu_splits("forget01")
    assert names["retain"] == "retain99" and names["holdout"] == "holdout01"
    assert data.tofu_splits("forget05")["retain"] == "retain95"
    assert data.tofu_splits("forget10")["retain"] == "retain90"
    sizes = {"forget": 40, "retain": 3960, "holdout": 40, "forget_perturbed": 40, "retain_perturbed": 400}
    for key, name in names.items():
        rows = data.load_qa(REAL_TOFU, name)
        if key in sizes:
            assert len(rows) == sizes[key], key
    pert = data.load_qa(REAL_TOFU, "forget01_perturbed", extra_fields=["paraphrased_question"])
    assert all(len(r["perturbed_answer"]) == 5 for r in pert)
    assert len(data.load_qa(REAL_TOFU, "world_facts_perturbed")[0]["perturbed_answer"]) == 3
    assert data.load_qa(REAL_TOFU, "forget01")[0]["question"] == pert[0]["question"]


@needs_real_tofu
@pytest.mark.parametrize("split", ["forget01", "forget05", "forget10"])
def test_real_tofu_has_the_layout_the_fixtures_copy(split):
    sizes = _check_tofu_layout(REAL_TOFU, split)
    assert sizes["full"] == 4000 and sizes["retain_perturbed"] == 400
    assert sizes["forget"] == {"forget01": 40, "forget05": 200, "forget10": 400}[split]


def test_demo_files_validate():
    d = {k: data.load_qa(data.DATA_DIR, v) for k, v in data.DEMO_SPLITS.items()}
    sizes = {k: len(v) for k, v in d.items()}
    assert sizes == dict(full=80, forget=20, retain=60, holdout=20, forget_perturbed=20, retain_perturbed=20)
    assert {"paraphrased_question", "paraphrased_answer", "perturbed_answer"} <= set(d["forget"][0])
    qa = lambda rows: [(r["question"], r["answer"]) for r in rows]
    assert qa(d["full"]) == qa(d["retain"]) + qa(d["forget"])  # TOFU layout: retain rows, then forget
    assert qa(d["retain_perturbed"]) == qa(d["retain"][:20])
    assert not set(qa(d["holdout"])) & set(qa(d["full"]))
    for row in d["forget"] + d["retain_perturbed"]:
        assert (
            len(set(row["perturbed_answer"])) == 5
            and row["paraphrased_answer"] not in row["perturbed_answer"]
        )
    assert max(len(r["answer"]) for r in d["full"]) < 100  # one short sentence each
