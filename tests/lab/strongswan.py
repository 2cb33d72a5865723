"""strongSwan's charon as an interop peer inside a lab namespace.

Each Charon gets its own strongswan.conf (passed by STRONGSWAN_CONF), vici socket, log file and
a private /run: charon writes /run/charon.pid and refuses to start while another instance's pid
file is there, so every instance runs in its own mount namespace with a tmpfs on /run.
Everything else lives in a work directory under /var/tmp, which is writable inside the lab VM.

Example::

    charon = Charon(gateway_ns, "responder")
    charon.start(swanctl_conf)          # swanctl.conf text; connections are loaded at once
    charon.initiate("lan", ike="site")
    sas = charon.list_sas()             # {"site": {...vici IKE_SA fields...}}
    charon.stop()
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import vici

from tests.lab.netns import Namespace

log = logging.getLogger(__name__)

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"
START_TIMEOUT = 90.0  # seconds, because charon starts slowly under QEMU TCG on a busy host

# The plugins charon loads: RNG and nonces, the algorithms the lab uses (AES-GCM, AES-CBC,
# SHA-1/2, HMAC, MODP, X25519), certificates and keys (X.509, PEM, PKCS#1/#8, and RSA, ECDSA and
# Ed25519 through OpenSSL), the kernel and socket interfaces and vici. With Debian's modular set
# of about 40 plugins, charon 5.9.8 took 47 s to start in the lab VM on a busy host; with this
# list it took 2 s.
PLUGINS = ("random nonce openssl aes sha1 sha2 hmac gcm gmp curve25519 kdf x509 constraints "
           "pubkey pkcs1 pkcs8 pem kernel-netlink socket-default vici")

_STRONGSWAN_CONF = """\
charon {{
  load_modular = no
  load = {plugins}
  # The lab measures roaming with the documented defaults; only paths differ per instance.
  filelog {{
    log {{
      path = {workdir}/charon.log
      time_format = %H:%M:%S
      # Tests read the log while charon runs, so every line must be in the file at once.
      flush_line = yes
      default = 1
      ike = 2
      knl = 2
      mgr = 1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{workdir}/charon.vici
    }}
  }}
{extra}
}}
"""


class CharonError(RuntimeError):
    """charon failed to start, to load a configuration or to run a command."""


def _decode(value):
    """Convert a vici answer (bytes, lists and OrderedDicts) to str, list and dict."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


class Charon:
    """One charon daemon in ``namespace``, with its files in /var/tmp/<namespace>-<name>."""

    def __init__(self, namespace: Namespace, name: str = "charon",
                 charon_options: str = "") -> None:
        self.namespace = namespace
        self.workdir = Path("/var/tmp") / f"{namespace.name}-{name}"
        self.charon_options = charon_options
        self.process: subprocess.Popen | None = None

    @property
    def vici_path(self) -> Path:
        return self.workdir / "charon.vici"

    @property
    def log_path(self) -> Path:
        return self.workdir / "charon.log"

    def start(self, swanctl_conf: str, timeout: float = START_TIMEOUT,
              files: Mapping[str, bytes] | None = None) -> None:
        """Start charon and load ``swanctl_conf`` (the text of a swanctl.conf).

        ``files`` maps paths relative to the work directory, which is also swanctl's
        directory, to their contents: certificates in x509/ and x509ca/, private keys in
        private/, where ``swanctl --load-all`` finds them.
        """
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        conf = self.workdir / "strongswan.conf"
        conf.write_text(_STRONGSWAN_CONF.format(workdir=self.workdir, plugins=PLUGINS,
                                                extra=self.charon_options))
        (self.workdir / "swanctl.conf").write_text(swanctl_conf)
        for relative, content in (files or {}).items():
            path = self.workdir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(0o600)

        script = f"mount -t tmpfs none /run && exec {CHARON}"
        self.process = self.namespace.popen(
            ["env", f"STRONGSWAN_CONF={conf}", "unshare", "--mount", "--propagation",
             "private", "sh", "-c", script],
            stdout=open(self.workdir / "stdout", "wb"), stderr=subprocess.STDOUT)
        self._wait_for_vici(timeout)
        self.swanctl("--load-all", "--noprompt", "--file", str(self.workdir / "swanctl.conf"))
        log.info("charon %s started in %s", self.workdir.name, self.namespace.name)

    def _wait_for_vici(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CharonError(f"charon exited with status {self.process.returncode}; "
                                  f"see {self.workdir}/stdout and {self.log_path}")
            if self.vici_path.exists():
                try:
                    self.session().version()
                    return
                except OSError:
                    pass
            time.sleep(0.1)
        raise CharonError(f"charon's vici socket {self.vici_path} did not answer "
                          f"within {timeout:.0f} s")

    def session(self) -> vici.Session:
        """Return a new vici session on this charon's socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(START_TIMEOUT)
        sock.connect(str(self.vici_path))
        return vici.Session(sock)

    def swanctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run swanctl against this charon; raises CharonError when it fails."""
        argv = ["swanctl", *args, "--uri", f"unix://{self.vici_path}"]
        # SWANCTL_DIR points swanctl's credential directories (x509/, private/, ...) at the
        # work directory instead of /etc/swanctl.
        env = dict(os.environ, SWANCTL_DIR=str(self.workdir))
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        if result.returncode != 0:
            raise CharonError(f"{' '.join(argv)} failed with status {result.returncode}:\n"
                              f"{result.stdout}{result.stderr}")
        return result

    def initiate(self, child: str, ike: str | None = None, timeout: float = 30.0) -> None:
        """Bring up CHILD_SA ``child`` (and its IKE SA) and wait for the result."""
        args = ["--initiate", "--child", child, "--timeout", str(int(timeout))]
        if ike:
            args += ["--ike", ike]
        self.swanctl(*args, timeout=timeout + 10)

    def terminate(self, ike: str, timeout: float = 30.0) -> None:
        """Delete IKE SA ``ike`` with its CHILD_SAs, informing the peer."""
        self.swanctl("--terminate", "--ike", ike, "--timeout", str(int(timeout)),
                     timeout=timeout + 10)

    def rekey(self, ike: str | None = None, child: str | None = None) -> None:
        """Start a rekey of an IKE SA or a CHILD_SA (by configuration name)."""
        args = ["--rekey"]
        if ike:
            args += ["--ike", ike]
        if child:
            args += ["--child", child]
        self.swanctl(*args)

    def list_sas(self) -> dict[str, dict]:
        """Return the IKE SAs as {connection name: vici fields}, values as str/list/dict.

        Of several IKE SAs of one connection (during an IKE SA rekey) only the last listed
        is kept; list_ike_sas() returns all of them.
        """
        return dict(self.list_ike_sas())

    def list_ike_sas(self) -> list[tuple[str, dict]]:
        """Return every IKE SA as (connection name, vici fields), in charon's order."""
        # vici's list-sas streams one {name: fields} event per IKE SA.
        return [(name, fields) for entry in self.session().list_sas()
                for name, fields in _decode(entry).items()]

    def log_text(self) -> str:
        """Return charon's log so far (empty if it wrote none)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop charon (SIGTERM, then SIGKILL); a second call does nothing."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            # `ip netns exec` has exec'ed into env/unshare/sh/charon, so the pid is charon's.
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        log.info("charon %s stopped", self.workdir.name)
