"""The bridge plugin's network configuration: the reference plugin's keys, the same defaults.

Pure parsing and validation; nothing here touches the system.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from netplane.cni.spec import (
    DECODE_FAILURE,
    INVALID_CONFIG,
    UNSUPPORTED_FIELD,
    CniError,
    Env,
    validate_ifname,
)

_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


@dataclass(frozen=True)
class BridgeConf:
    raw: dict[str, Any]
    name: str
    cni_version: str
    bridge: str = "cni0"
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    mtu: int = 0
    hairpin_mode: bool = False
    promisc_mode: bool = False
    vlan: int = 0
    preserve_default_vlan: bool = True
    enable_dad: bool = False
    port_isolation: bool = False
    disable_container_interface: bool = False  # layer 2 only: the container end stays down
    mac_spoof_check: bool = False  # macspoofchk: the container's frames keep its MAC
    mac: str = ""
    ipam: dict[str, Any] = field(default_factory=dict)
    dns: dict[str, Any] = field(default_factory=dict)
    prev_result: dict[str, Any] | None = None

    @property
    def ipam_type(self) -> str:
        return str(self.ipam.get("type", ""))


def decode(stdin: bytes) -> dict[str, Any]:
    try:
        conf = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "failed to parse network configuration", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network configuration is not a JSON object")
    return conf


def _typed(conf: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = conf.get(key, default)
    if value is None:
        return default
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise CniError(INVALID_CONFIG, f"{key}: expected {kind.__name__}, got {value!r}")
    return value


# Keys the reference accepts that netplane does not implement: refused only when not default.
_UNSUPPORTED_UNLESS_DEFAULT: dict[str, tuple[Any, ...]] = {
    "vlanTrunk": (None, []),
}


def parse(conf: dict[str, Any], env: Env) -> BridgeConf:
    """Validate like the reference bridge's loadNetConf, so the same configs pass and fail."""
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, "network configuration has no name")
    for key, defaults in _UNSUPPORTED_UNLESS_DEFAULT.items():
        if conf.get(key) not in defaults:
            raise CniError(UNSUPPORTED_FIELD, f"{key} is not supported by netplane-bridge", key)
    bridge = _typed(conf, "bridge", str, "") or "cni0"
    validate_bridge_name(bridge)
    is_default_gw = _typed(conf, "isDefaultGateway", bool, False)
    hairpin = _typed(conf, "hairpinMode", bool, False)
    promisc = _typed(conf, "promiscMode", bool, False)
    if hairpin and promisc:
        raise CniError(
            INVALID_CONFIG, "cannot set hairpin mode and promiscuous mode at the same time"
        )
    vlan = _typed(conf, "vlan", int, 0)
    if not 0 <= vlan <= 4094:
        raise CniError(INVALID_CONFIG, f"invalid VLAN ID {vlan} (must be between 0 and 4094)")
    mtu = _typed(conf, "mtu", int, 0)
    if mtu < 0:
        raise CniError(INVALID_CONFIG, f"invalid MTU {mtu}")
    ipam = _typed(conf, "ipam", dict, {})
    disabled = _typed(conf, "disableContainerInterface", bool, False)
    if disabled and ipam.get("type"):
        raise CniError(INVALID_CONFIG, "cannot use IPAM when disableContainerInterface is set")
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult is not an object")
    return BridgeConf(
        raw=conf,
        name=name,
        cni_version=str(conf.get("cniVersion", "0.1.0")),
        bridge=bridge,
        is_gateway=_typed(conf, "isGateway", bool, False) or is_default_gw,
        is_default_gateway=is_default_gw,
        force_address=_typed(conf, "forceAddress", bool, False),
        ip_masq=_typed(conf, "ipMasq", bool, False),
        mtu=mtu,
        hairpin_mode=hairpin,
        promisc_mode=promisc,
        vlan=vlan,
        preserve_default_vlan=_typed(conf, "preserveDefaultVlan", bool, True),
        enable_dad=_typed(conf, "enabledad", bool, False),
        port_isolation=_typed(conf, "portIsolation", bool, False),
        disable_container_interface=disabled,
        mac_spoof_check=_typed(conf, "macspoofchk", bool, False),
        mac=_mac(conf, env),
        ipam=ipam,
        dns=_typed(conf, "dns", dict, {}),
        prev_result=prev,
    )


def validate_bridge_name(name: str) -> None:
    try:
        validate_ifname(name)
    except CniError:
        raise CniError(
            INVALID_CONFIG, f"bridge name {name!r} is not a valid interface name"
        ) from None


def _mac(conf: dict[str, Any], env: Env) -> str:
    """runtimeConfig.mac wins over CNI_ARGS MAC=, as in the reference."""
    runtime = conf.get("runtimeConfig") or {}
    mac = str(runtime.get("mac") or env.args.get("MAC", ""))
    if mac and not _MAC.match(mac):
        raise CniError(INVALID_CONFIG, f"invalid MAC address {mac!r}")
    return mac.lower()
