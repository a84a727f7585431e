"""The real Home Assistant against the real service, set up as a new owner sets it up.

    ./build.py bench homeassistant [--json FILE]

Home Assistant runs from PyPI (the version pinned below) and is driven through the REST calls its own
frontend makes: onboarding, then Settings -> Devices & services -> Add integration -> Ollama (a wrong key,
none, then the box's token), the model list, the integration's pre-filled `llama3.2:latest` (which makes
it ask the box to pull it), and three sub-entries: an agent with Assist, one without, an AI task.  The box
serves SmolLM2 under Qwen 2.5's template, which offers tools (`tests/support/clients.py`).  Then:
* three Assist turns with Home Assistant's intents as tools: whatever a 135M model makes of them, each
  must end without an error, every call the box returns being read and run by Home Assistant;
* a plain conversation, and an AI task with a structure (`ai_task.generate_data`), whose reply the grammar
  makes parse and fit;
* Assist on SmolLM2's own template, which has no tools: the box's 400 must be in Home Assistant's log.
Home Assistant 2026.11 needs Python >= 3.14, which neither a Debian 12 host nor the image's trixie has: it
runs from a Debian sid root that mmdebstrap makes once under ~/.cache/paladin/homeassistant (with pip,
under a minute here), in a private mount namespace that shares the host's network, since it calls the box
on 127.0.0.1.  Everything seen is printed and written as JSON; the run fails on the first step that does
not go as a new owner would expect.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx

from buildhost import CACHE
from buildhost.debian import MIRROR, ensure_host_packages
from buildhost.qemu import free_port
from buildhost.steps import StepError, run, step
from tests.support.clients import SERVED, App, box, expect, report, results_file
from tests.support.served import Service

VERSION = "2026.11.0"
ROOT = CACHE / "homeassistant" / VERSION
PYTHON = "python3.14"
# Home Assistant's user agent for the REST calls; its frontend sends the page's own address as client_id.
CLIENT_ID = "http://127.0.0.1/"
CONFIG = """
homeassistant:
  name: Home
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: NL
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {port}
logger:
  default: warning
  logs:
    homeassistant.components.ollama: debug
input_boolean:
  kitchen_power:
    name: Kitchen power
template:
  - light:
      - name: Kitchen light
        state: "{{{{ is_state('input_boolean.kitchen_power', 'on') }}}}"
        turn_on:
          action: input_boolean.turn_on
          target:
            entity_id: input_boolean.kitchen_power
        turn_off:
          action: input_boolean.turn_off
          target:
            entity_id: input_boolean.kitchen_power
"""


def rootfs() -> Path:
    """Debian sid with Python 3.14 and Home Assistant in a venv at /ha, made once."""
    if (ROOT / "ha/bin/hass").exists():
        return ROOT
    ensure_host_packages(["mmdebstrap"])
    partial = ROOT.with_name(ROOT.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    # sid's Release on this mirror can be past its Valid-Until; its signature is still checked.
    run(["mmdebstrap", "--variant=apt", "--aptopt=Acquire::Check-Valid-Until \"false\"",
         f"--include={PYTHON},{PYTHON}-venv,{PYTHON}-dev,g++,ca-certificates", "sid", partial, MIRROR],
        log=ROOT.parent / "mmdebstrap.log", hint="mmdebstrap needs Debian's mirror")
    # The host's trust store: PyPI may be reached through a proxy whose CA only the host knows.
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", partial / "etc/ssl/certs/ca-certificates.crt")
    shutil.copy("/etc/resolv.conf", partial / "etc/resolv.conf")
    inside(partial, [PYTHON, "-m", "venv", "/ha"], log=ROOT.parent / "venv.log")
    inside(partial, ["/ha/bin/pip", "install", "-q", f"homeassistant=={VERSION}"], log=ROOT.parent / "pip.log")
    partial.replace(ROOT)
    return ROOT


def chroot_argv(root: Path, argv: list) -> list:
    """`argv` inside `root`, with /dev, /proc and a fresh /tmp, in a mount namespace that ends with it."""
    env = ["PATH=/ha/bin:/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1",
           "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt"]
    script = ('mount --rbind /dev "$0/dev" && mount -t proc proc "$0/proc" && mount -t tmpfs tmpfs "$0/tmp" '
              '&& exec chroot "$0" "$@"')
    return ["unshare", "--mount", "--fork", "--kill-child", "sh", "-c", script, root, "env", "-i", *env, *argv]


def inside(root: Path, argv: list, log: Path) -> None:
    run(chroot_argv(root, argv), log=log)


class HomeAssistant(App):
    """`hass` in its root, on 127.0.0.1, with a fresh configuration directory; onboarded, with a token."""

    def __init__(self, root: Path):
        config = root / "config"
        shutil.rmtree(config, ignore_errors=True)
        config.mkdir()
        port = free_port()
        (config / "configuration.yaml").write_text(CONFIG.format(port=port))
        super().__init__("Home Assistant", chroot_argv(root, ["hass", "-c", "/config"]), port,
                         root.parent / "hass.log", "/api/onboarding")
        self.http.headers["Authorization"] = f"Bearer {self._onboard()}"

    def _onboard(self) -> str:
        """The owner's account, as the onboarding page makes it, then its access token."""
        made = self.http.post("/api/onboarding/users", json={
            "client_id": CLIENT_ID, "name": "Owner", "username": "owner", "password": "a long passphrase",
            "language": "en"})
        made.raise_for_status()
        token = self.http.post("/auth/token", data={"grant_type": "authorization_code", "client_id": CLIENT_ID,
                                                    "code": made.json()["auth_code"]})
        token.raise_for_status()
        return token.json()["access_token"]

    def flow(self, path: str, start: dict, answers: list[dict]) -> list[dict]:
        """A config flow as the frontend walks it: start, then each answer; every step's reply."""
        steps = [self.ok(self.http.post(path, json=start))]
        for answer in answers:
            steps.append(self.ok(self.http.post(f"{path}/{steps[-1]['flow_id']}", json=answer)))
        return steps

    def progress(self, path: str, step: dict, timeout: float = 120) -> dict:
        """A flow step showing progress (a download), followed until it moves on."""
        deadline = time.monotonic() + timeout
        while step.get("type") == "progress" and time.monotonic() < deadline:
            time.sleep(1)
            step = self.ok(self.http.post(f"{path}/{step['flow_id']}", json={}))
        return step

    def settled(self, entry: str, timeout: float = 60) -> None:
        """Wait for a config entry to be loaded again: it reloads whenever a sub-entry is added."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e["entry_id"] == entry and e["state"] == "loaded"
                   for e in self.ok(self.http.get("/api/config/config_entries/entry"))):
                return
            time.sleep(0.5)
        raise StepError(f"config entry {entry} was not loaded again within {timeout:.0f} s")

    def entities(self, domain: str) -> list[str]:
        return sorted(s["entity_id"] for s in self.ok(self.http.get("/api/states"))
                      if s["entity_id"].startswith(domain + "."))

    def state(self, entity: str) -> str:
        return self.ok(self.http.get(f"/api/states/{entity}"))["state"]

    def say(self, agent: str, text: str) -> dict:
        return self.ok(self.http.post("/api/conversation/process",
                                       json={"text": text, "agent_id": agent, "language": "en"}))

    def service(self, domain: str, name: str, data: dict) -> dict:
        return self.ok(self.http.post(f"/api/services/{domain}/{name}?return_response", json=data))


def setup(box: Service, ha: HomeAssistant, token: str, results: dict) -> str:
    """The integration as a new owner adds it: a wrong key, none, then the box's token; the entry's id."""
    add = "/api/config/config_entries/flow"
    for name, key in (("wrong key", {"api_key": "not-a-token"}), ("no key", {})):
        refused = ha.flow(add, {"handler": "ollama"}, [{"url": box.url} | key])[-1]
        expect(results, name, refused.get("errors"), refused.get("errors") == {"base": "invalid_auth"},
               "the form again, with invalid_auth")
    made = ha.flow(add, {"handler": "ollama"}, [{"url": box.url, "api_key": token}])[-1]
    expect(results, "integration added", made.get("type"), made.get("type") == "create_entry", "create_entry")
    return made["result"]["entry_id"]


def subentries(ha: HomeAssistant, entry: str, results: dict) -> None:
    """The model list, the integration's pre-filled default (a pull the box refuses), then an agent with
    Assist, one without, and an AI task."""
    sub = "/api/config/config_entries/subentries/flow"
    form = ha.flow(sub, {"handler": [entry, "conversation"]}, [])[0]
    model_field = next(f for f in form["data_schema"] if f["name"] == "model")
    offered = [o["label"] for o in model_field["selector"]["select"]["options"]]
    expect(results, "models offered", offered[:3], set(offered[:2]) == {f"{SERVED}:latest (downloaded)",
                                                                        "paladin:latest (downloaded)"},
           "the served model and paladin first, as downloaded")
    pulled = ha.progress(sub, ha.flow(sub, {"handler": [entry, "conversation"]},
                                      [{"name": "Default model", "model": "llama3.2:latest"}])[-1])
    refusal = ha.logged("while downloading model")
    expect(results, "pre-filled model", {"flow": pulled.get("reason"), "log": refusal.split("model: ")[-1]},
           pulled.get("reason") == "download_failed" and "not in this box's catalog" in refusal,
           "download_failed, with the box's reason in Home Assistant's log")
    options = {"model": "paladin:latest", "num_ctx": 8192, "max_history": 20, "keep_alive": -1, "think": False}
    for kind, name, extra in (("conversation", "Box Assist", {"llm_hass_api": ["assist"]}),
                              ("conversation", "Box chat", {}), ("ai_task_data", "Box tasks", {})):
        ha.settled(entry)  # the entry reloads after each sub-entry; a flow on an unloaded entry aborts
        made = ha.flow(sub, {"handler": [entry, kind]}, [{"name": name} | options | extra])[-1]
        expect(results, f"{name} added", made.get("type"), made.get("type") == "create_entry", "create_entry")
    ha.settled(entry)
    made = set(ha.entities("conversation") + ha.entities("ai_task"))
    expect(results, "entities", sorted(made), {"conversation.box_assist", "conversation.box_chat",
                                               "ai_task.box_tasks"} <= made, "each named after its sub-entry")


def assist(ha: HomeAssistant, results: dict) -> None:
    """Voice-assistant turns with Home Assistant's intents as tools: whatever a 135M model makes of them,
    each reply must reach the owner without an error, and every call must be one Home Assistant can run."""
    for text in ("Turn on the kitchen light", "Is the kitchen light on?", "Turn off the kitchen light"):
        before, started = len(ha.output().splitlines()), time.monotonic()
        reply = ha.say("conversation.box_assist", text)
        time.sleep(1)  # Home Assistant logs from a queue of its own, a moment after it answers
        lines = ha.output().splitlines()[before:]
        calls = [call for line in lines if "Received response" in line
                 for call in re.findall(r"ToolCall\(function=Function\((name='[^']*', arguments=.*?)\)\)", line)]
        failed = [line for line in lines if "ERROR" in line]
        seen = {"speech": reply["response"]["speech"].get("plain", {}).get("speech", "")[:200],
                "response_type": reply["response"]["response_type"], "tool_calls": calls[:8],
                "seconds": round(time.monotonic() - started, 1), "light": ha.state("light.kitchen_light"),
                "errors": failed[:3]}
        expect(results, f"assist: {text}", seen, seen["response_type"] != "error" and not failed,
               "an answer, with no error in Home Assistant's log")


def chat_and_task(ha: HomeAssistant, results: dict) -> None:
    reply = ha.say("conversation.box_chat", "Say hello in one short sentence.")
    speech = reply["response"]["speech"].get("plain", {}).get("speech", "")
    expect(results, "plain chat", speech[:200], bool(speech.strip()), "a reply in words")
    task = ha.service("ai_task", "generate_data", {
        "entity_id": "ai_task.box_tasks", "task_name": "weather",
        "instructions": "Describe the weather in Amsterdam today and say whether it rains.",
        "structure": {"summary": {"required": True, "selector": {"text": {}}},
                      "rain": {"required": True, "selector": {"boolean": {}}}}})
    data = task.get("service_response", {}).get("data")
    expect(results, "AI task with a structure", data, isinstance(data, dict) and set(data) == {"summary", "rain"}
           and isinstance(data["summary"], str) and isinstance(data["rain"], bool),
           "an object with a string summary and a boolean rain")


def no_tools(box: Service, ha: HomeAssistant, results: dict) -> None:
    """The box switched to SmolLM2 with its own template, which has no tools (and no catalog tier that
    teaches it them): Assist's turn fails, with the box's reason in Home Assistant's log (its conversation API answers 500 for any error inside a stream)."""
    httpx.put(f"{box.url}/models/default", json={"model": "smollm2.gguf"},
              headers={"Authorization": f"Bearer {box.token}"}, timeout=120).raise_for_status()
    before = len(ha.output().splitlines())
    answered = ha.http.post("/api/conversation/process", json={"text": "Turn on the kitchen light",
                                                                "agent_id": "conversation.box_assist"})
    reason = ha.logged("_types.ResponseError: ", before)
    expect(results, "assist on a model without tools", {"status": answered.status_code,
                                                        "log": reason.split("ResponseError: ")[-1]},
           "does not take tools" in reason, "the box's 400 saying so in Home Assistant's log")


def main() -> None:
    out = results_file(__doc__)
    with step(f"Home Assistant {VERSION} in a sid root"):
        root = rootfs()
    results: dict = {"home_assistant": VERSION}
    with box("home-assistant") as (service, token):
        with step("Home Assistant up and onboarded"):
            ha = HomeAssistant(root)
        with ha, step("the owner's steps"):
            entry = setup(service, ha, token, results)
            subentries(ha, entry, results)
            assist(ha, results)
            chat_and_task(ha, results)
            no_tools(service, ha, results)
    report(results, out)


if __name__ == "__main__":
    main()
