"""Judges: rule and gold on realistic replies; the LLM judge for real, with a tiny local
transformers LM saved to disk and with a tiny OpenAI-compatible HTTP server in a thread."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cordflow.train.judges import (
    DEFAULT_PROMPT,
    EndpointJudge,
    GoldJudge,
    JudgeError,
    LocalLMJudge,
    RuleJudge,
    Verdict,
    make_judge,
    parse_yes_no,
    render_prompt,
)

NUMBER = {"question": "What is 7 plus 5?", "answer": "12", "answer_type": "number",
          "choices": None}
CHOICE = {"question": "What is 3 plus 4? A: 6, B: 7, C: 8, D: 9", "answer": "B",
          "answer_type": "choice", "choices": ["6", "7", "8", "9"]}
TEXT = {"question": "What is the capital of France?", "answer": "Paris", "answer_type": "text",
        "choices": None}


# ----------------------------------------------------------------------------- rule, gold

@pytest.mark.parametrize(
    "rollout, reference, item, reward",
    [
        ("12", "12", NUMBER, 1),                                       # tiny model
        ("The answer is 12.", "7 plus 5 equals 12.", NUMBER, 1),       # 7B model
        ("12", "Adding them gives 12.0", NUMBER, 1),                   # mixed
        ("13", "12", NUMBER, 0),
        ("I don't know.", "I am not sure.", NUMBER, 0),                # nothing read: never agrees
        ("B", "The answer is (B) 7.", CHOICE, 1),
        ("7", "B", CHOICE, 1),                                         # an option's text
        ("A", "B", CHOICE, 0),
        ("B or C", "B", CHOICE, 0),                                    # ambiguous
        ("paris", "The answer is Paris.", TEXT, 1),
        ("Lyon", "Paris", TEXT, 0),
    ],
)
def test_rule_judge_compares_the_extracted_answers(rollout, reference, item, reward):
    [verdict] = RuleJudge()([rollout], [reference], [item])
    assert verdict.reward == reward


def test_rule_judge_compares_with_the_reference_not_the_gold_and_says_what_it_read():
    rollouts, refs, items = ["13", "The answer is 12."], ["13", "I think 13"], [NUMBER, NUMBER]
    rule = RuleJudge()(rollouts, refs, items)
    gold = GoldJudge()(rollouts, refs, items)
    assert [v.reward for v in rule] == [1, 0]
    assert [v.reward for v in gold] == [0, 1]
    assert rule[1].reason == "rollout '12' reference '13'"
    assert gold[1].reason == "rollout '12' gold '12'"


def test_judges_need_one_item_and_reference_per_rollout():
    with pytest.raises(ValueError, match="one item"):
        RuleJudge()(["12", "12"], ["12"], [NUMBER, NUMBER])
    with pytest.raises(ValueError, match="one item"):
        GoldJudge()(["12", "12"], None, [NUMBER])


# ----------------------------------------------------------------------------- prompts, parsing

@pytest.mark.parametrize(
    "reply, value",
    [("Yes", 1), ("yes.", 1), ("**No**, they differ.", 0), ("NO", 0), ("They agree, so: yes", 1),
     ("<think>no idea... maybe no</think>\nYes", 1), ("Maybe", None), ("", None),
     ("It is yes and no", None), ("Yes, no doubt", 1), ("Not the same", None)],
)
def test_parse_yes_no(reply, value):
    assert parse_yes_no(reply) == value


def test_render_prompt_fills_the_template():
    text = render_prompt(DEFAULT_PROMPT, "The answer is 7.", "B", CHOICE)
    assert "Question: What is 3 plus 4? A: 6, B: 7, C: 8, D: 9" in text
    assert "Answer 1: B\nAnswer 2: The answer is 7." in text
    custom = render_prompt("{rollout} vs {answer} ({choices}) {{ok}}", "7", None, CHOICE)
    assert custom == "7 vs B (A: 6, B: 7, C: 8, D: 9) {ok}"


@pytest.mark.parametrize("prompt, message", [("{rollout} {gold}", "unknown field"),
                                             ("{reference} only", "must contain {rollout}"),
                                             ("{rollout", "valid template")])
def test_bad_prompt_templates_fail_fast(prompt, message):
    with pytest.raises(JudgeError, match=message):
        EndpointJudge("http://127.0.0.1:1/v1", "m", prompt=prompt)


# ----------------------------------------------------------------------------- local model

def save_tiny_lm(path, verdict=None, chat=True):
    """A tiny random Qwen2 causal LM and a byte-level BPE tokenizer trained offline,
    saved with save_pretrained (the judge reloads them as it would a staged Qwen judge).

    ``verdict="yes"``/``"no"`` makes the reply certain by construction: with every
    attention and MLP output projection zeroed, the last hidden state is the (constant)
    embedding, all ones after the final norm; the lm_head rows of the chosen word's first
    tokens are +1 everywhere, the other word's -1 and the rest 0, so that word wins for
    ANY prompt.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [DEFAULT_PROMPT, "yes Yes no No", "What is 7 plus 5? The answer is 12."] * 4
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    if chat:
        tok.chat_template = (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=1024, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    if verdict is not None:
        reloaded = AutoTokenizer.from_pretrained(path)

        def first_ids(words):
            return {reloaded.encode(w, add_special_tokens=False)[0] for w in words}

        yes, no = first_ids(LocalLMJudge.YES), first_ids(LocalLMJudge.NO)
        win, lose = (yes - no, no - yes) if verdict == "yes" else (no - yes, yes - no)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            model.model.embed_tokens.weight.fill_(1.0)
            model.model.norm.weight.fill_(1.0)
            model.lm_head.weight.zero_()
            model.lm_head.weight[sorted(win)] = 1.0
            model.lm_head.weight[sorted(lose)] = -1.0
    model.save_pretrained(path)
    return path


ROLLOUTS = ["12", "The answer is 13.", "7 plus 5 is 12", "What?"]


@pytest.mark.parametrize("verdict, reward", [("yes", 1), ("no", 0)])
def test_local_judge_scores_yes_against_no(tmp_path, verdict, reward):
    judge = make_judge({"kind": "llm", "model_path": str(save_tiny_lm(tmp_path, verdict)),
                        "batch_size": 3, "device": "cpu"})
    assert isinstance(judge, LocalLMJudge)
    verdicts = judge(ROLLOUTS, ["12"] * 4, [NUMBER] * 4)
    assert [v.reward for v in verdicts] == [reward] * 4
    p = float(verdicts[0].reason.split()[-1])
    assert p > 0.999 if reward else p < 0.001


@pytest.mark.parametrize("chat", [True, False])
def test_local_judge_is_deterministic_and_batching_does_not_change_it(tmp_path, chat):
    """Random weights: left padding with its positions gives the same scores as one
    prompt at a time, the same call twice gives the same scores, and the prompt reaches
    the model (different rollouts, different scores)."""
    path = save_tiny_lm(tmp_path, verdict=None, chat=chat)
    batched = LocalLMJudge(path, batch_size=4, device="cpu")
    single = LocalLMJudge(path, batch_size=1, device="cpu")
    refs, items = ["12"] * 4, [NUMBER] * 4
    prompts = [render_prompt(DEFAULT_PROMPT, r, "12", NUMBER) for r in ROLLOUTS]
    p_batched, p_single = batched.p_yes(prompts), single.p_yes(prompts)
    assert p_batched == pytest.approx(p_single, abs=1e-5)
    assert batched.p_yes(prompts) == p_batched
    assert len({round(p, 6) for p in p_batched}) > 1
    verdicts = batched(ROLLOUTS, refs, items)
    assert [v.reward for v in verdicts] == [int(p > 0.5) for p in p_batched]


def test_local_judge_fails_fast_naming_a_missing_model(tmp_path):
    missing = tmp_path / "no-judge-here"
    with pytest.raises(JudgeError, match=str(missing)):
        make_judge({"kind": "llm", "model_path": str(missing)})


# ----------------------------------------------------------------------------- endpoint

def chat_reply(content):
    return json.dumps({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content},
         "finish_reason": "stop"}]}).encode()


class FakeServer:
    """An OpenAI-style chat-completions server in a thread. ``respond(body, n)`` returns
    (status, bytes, delay_s) for the n-th request (status None: send the bytes raw, not as
    HTTP); every request is recorded."""

    def __init__(self, respond):
        self.requests = []
        self.respond = respond
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                n = len(server.requests)
                server.requests.append({"path": self.path, "headers": dict(self.headers),
                                        "body": body})
                status, data, delay = server.respond(body, n)
                time.sleep(delay)
                if status is None:  # not HTTP at all
                    self.wfile.write(data)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *args: None  # a client that timed out hung up
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(respond):
        servers.append(FakeServer(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def endpoint(server, **kw):
    cfg = {"kind": "llm", "base_url": server.url, "model": "judge-7b", "timeout_s": 2.0,
           "retries": 2, "backoff_s": 0.01, "max_workers": 4, **kw}
    return make_judge(cfg)


def by_rollout(replies):
    """Reply by the rollout in the prompt (requests run concurrently, in any order)."""

    def respond(body, n):
        prompt = body["messages"][0]["content"]
        rollout = prompt.split("Answer 2: ", 1)[1].split("\n", 1)[0]
        status, data = replies[rollout]
        return status, data, 0.0

    return respond


def test_endpoint_judge_asks_the_server_and_parses_its_replies(serve, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sekrit")
    server = serve(by_rollout({
        "12": (200, chat_reply("Yes.")),
        "The answer is 12.": (200, chat_reply("yes, both say 12")),
        "13": (200, chat_reply("No, 13 is not 12.")),
        "dunno": (200, chat_reply("Maybe?")),
    }))
    judge = endpoint(server, api_key_env="JUDGE_KEY")
    assert isinstance(judge, EndpointJudge)
    rollouts = ["12", "The answer is 12.", "13", "dunno"]
    verdicts = judge(rollouts, ["12"] * 4, [NUMBER] * 4)
    assert [v.reward for v in verdicts] == [1, 1, 0, 0]
    assert verdicts[2].reason == "reply 'No, 13 is not 12.'"
    assert verdicts[3].reason == "unparseable reply: 'Maybe?'"
    assert len(server.requests) == 4
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sekrit"
    assert req["body"]["model"] == "judge-7b" and req["body"]["temperature"] == 0
    sent = sorted(r["body"]["messages"][0]["content"] for r in server.requests)
    assert sent == sorted(render_prompt(DEFAULT_PROMPT, r, "12", NUMBER) for r in rollouts)


def test_endpoint_bad_replies_are_a_zero_with_the_reason_never_a_crash(serve):
    server = serve(by_rollout({
        "html": (200, b"<html>oops</html>"),
        "empty": (200, b"{}"),
        "no choices": (200, json.dumps({"choices": []}).encode()),
        "null": (200, chat_reply(None)),
        "blank": (200, chat_reply("")),
    }))
    rollouts = ["html", "empty", "no choices", "null", "blank"]
    verdicts = endpoint(server)(rollouts, ["12"] * 5, [NUMBER] * 5)
    assert [v.reward for v in verdicts] == [0] * 5
    assert all(v.reason.startswith("unparseable reply") for v in verdicts)
    assert "<html>oops" in verdicts[0].reason


def test_endpoint_retries_server_errors_and_timeouts(serve):
    def respond(body, n):
        if n == 0:
            return 503, b'{"error": "loading"}', 0.0
        if n == 1:
            return 200, chat_reply("no"), 1.5  # slower than timeout_s: the client gives up
        return 200, chat_reply("Yes"), 0.0

    server = serve(respond)
    verdicts = endpoint(server, timeout_s=0.5, max_workers=1)(["12"], ["12"], [NUMBER])
    assert verdicts == [Verdict(1, "reply 'Yes'")]
    assert len(server.requests) == 3


def test_endpoint_gives_up_after_its_retries_naming_the_url(serve):
    server = serve(lambda body, n: (503, b"busy", 0.0))
    with pytest.raises(JudgeError, match=r"chat/completions failed 3 times \(last: HTTP 503\)"):
        endpoint(server, retries=2)(["12"], ["12"], [NUMBER])
    assert len(server.requests) == 3


def test_endpoint_retries_a_reply_that_is_not_http(serve):
    def respond(body, n):
        return (None, b"garbage\r\n\r\n", 0.0) if n == 0 else (200, chat_reply("no"), 0.0)

    server = serve(respond)
    assert endpoint(server)(["13"], ["12"], [NUMBER]) == [Verdict(0, "reply 'no'")]
    assert len(server.requests) == 2


def test_endpoint_client_errors_fail_at_once(serve):
    server = serve(lambda body, n: (401, b'{"error": "bad key"}', 0.0))
    with pytest.raises(JudgeError, match="HTTP 401"):
        endpoint(server)(["12"], ["12"], [NUMBER])
    assert len(server.requests) == 1


def test_endpoint_unreachable_server_is_an_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    judge = EndpointJudge(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff_s=0.01)
    with pytest.raises(JudgeError, match="failed 2 times"):
        judge(["12"], ["12"], [NUMBER])


def test_endpoint_config_errors_name_the_key(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(JudgeError, match="NO_SUCH_JUDGE_KEY is not set"):
        EndpointJudge("http://127.0.0.1:1/v1", "m", api_key_env="NO_SUCH_JUDGE_KEY")
    with pytest.raises(JudgeError, match="base_url"):
        EndpointJudge("127.0.0.1:8000", "m")
    with pytest.raises(JudgeError, match="train.judge.model"):
        EndpointJudge("http://127.0.0.1:1/v1", "")


# ----------------------------------------------------------------------------- factory

def test_make_judge_kinds_and_errors():
    assert isinstance(make_judge(None), RuleJudge)
    assert isinstance(make_judge({"kind": "gold"}), GoldJudge)
    with pytest.raises(JudgeError, match="unknown key"):
        make_judge({"kind": "rule", "temprature": 0})
    with pytest.raises(JudgeError, match="not one of"):
        make_judge({"kind": "oracle"})
    with pytest.raises(JudgeError, match="exactly one of model_path"):
        make_judge({"kind": "llm"})
    with pytest.raises(JudgeError, match="exactly one of model_path"):
        make_judge({"kind": "llm", "model_path": "/x", "base_url": "http://h/v1"})
