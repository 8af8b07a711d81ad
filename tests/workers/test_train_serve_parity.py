"""Train/serve parity: a conversation tokenised at training time and at serving time gives identical ids,
and serving renders a fine-tuned model with the chat template saved next to its weights, not the
base model's current one."""

import shutil

from api.services.serving import ServingHub, Target
from chatforge.settings import Settings
from chatforge.storage import LocalStorage
from ml.config import SupervisedConfig
from ml.data.render import render_conversation, render_prompt
from ml.events import PrintSink
from ml.models import load_tokenizer
from ml.records import Conversation, Message, write_canonical
from ml.train.sft import run_supervised

CUSTOM_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _BaseEngine:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


def test_training_and_serving_tokenise_identically(tmp_path, tiny_model_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_path, base)
    (base / "chat_template.jinja").write_text(CUSTOM_TEMPLATE)  # no injected system prompt
    convs = [Conversation(messages=(Message("user", f"What is {i}+{i}?"), Message("assistant", f"{2 * i}.")))
             for i in range(8)]
    train = tmp_path / "train.jsonl"
    write_canonical(train, convs)
    cfg = SupervisedConfig(max_steps=1, batch_size=4, max_seq_length=64, bf16=False)
    res = run_supervised(cfg, base, train, None, tmp_path / "out", PrintSink(verbose=False))
    assert res.status == "succeeded"
    trained_tok = load_tokenizer(res.model_dir)

    conv = Conversation(messages=(Message("user", "What is 3+3?"), Message("assistant", "6.")))
    train_ids = render_conversation(trained_tok, conv).input_ids

    hub = ServingHub(Settings(data_dir=tmp_path / "data"), LocalStorage(tmp_path / "storage"))
    original = load_tokenizer(tiny_model_path)  # the base model's current template (with a system prompt)
    target = Target(engine_id="base", adapter="ft:x", adapter_dir=res.model_dir)
    serve_ids = hub.prompt_ids(_BaseEngine(original), target, [{"role": "user", "content": "What is 3+3?"}])
    assert train_ids[: len(serve_ids)] == serve_ids
    # the answer tokens follow the prompt exactly as in training
    assert len(train_ids) > len(serve_ids)
    # and the base model's own (different) template would have rendered something else
    assert render_prompt(original, [{"role": "user", "content": "What is 3+3?"}]) != serve_ids
