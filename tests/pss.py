"""Pod Security Standards, ``restricted`` profile, checked field by field on a pod or a workload manifest.

Pure: give it a Pod, a Deployment (or any workload with a pod template) or a bare pod spec; it returns one
readable line per violation, naming the field. ``restricted`` includes every ``baseline`` control, so both
are checked. The controls follow the Kubernetes "Pod Security Standards" page (policy version latest for
Kubernetes 1.30 to 1.33); each check below names the control it implements.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# baseline "Capabilities": what a container may add at most.
BASELINE_ADDABLE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
# restricted "Capabilities": drop ALL, add nothing but this.
RESTRICTED_ADDABLE_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
# restricted "Volume Types".
RESTRICTED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
# baseline "Sysctls": the safe set.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
# baseline "SELinux": allowed types.
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
# Fields of a volume source that are not its type.
_VOLUME_NON_SOURCE_FIELDS = frozenset({"name"})

_WORKLOAD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})


def pod_of(manifest: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The pod ``(metadata, spec)`` of a Pod, a workload with a pod template, or a CronJob."""
    kind = manifest.get("kind")
    if kind == "Pod":
        return manifest.get("metadata") or {}, manifest.get("spec") or {}
    if kind in _WORKLOAD_TEMPLATE_KINDS:
        template = manifest["spec"]["template"]
    elif kind == "CronJob":
        template = manifest["spec"]["jobTemplate"]["spec"]["template"]
    elif kind is None and "containers" in manifest:
        return {}, manifest  # a bare pod spec
    else:
        raise ValueError(f"not a pod or a workload with a pod template: kind={kind!r}")
    return template.get("metadata") or {}, template.get("spec") or {}


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for index, container in enumerate(spec.get(field) or []):
            yield f"spec.{field}[{index}]({container.get('name', '?')})", container


def restricted_violations(manifest: Mapping[str, Any]) -> list[str]:
    """Every ``restricted`` (and ``baseline``) violation of the pod in ``manifest``; empty when it complies."""
    metadata, spec = pod_of(manifest)
    problems: list[str] = []
    pod_sc: Mapping[str, Any] = spec.get("securityContext") or {}
    containers = list(_containers(spec))
    if not containers:
        problems.append("spec.containers: the pod has no containers")

    # baseline: Host Namespaces.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"spec.{field}: must be unset or false")

    # baseline: HostProcess (pod level).
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("spec.securityContext.windowsOptions.hostProcess: must be unset or false")

    # baseline: HostPath Volumes; restricted: Volume Types.
    for index, volume in enumerate(spec.get("volumes") or []):
        sources = set(volume) - _VOLUME_NON_SOURCE_FIELDS
        where = f"spec.volumes[{index}]({volume.get('name', '?')})"
        if "hostPath" in sources:
            problems.append(f"{where}.hostPath: hostPath volumes are forbidden")
        for source in sorted(sources - RESTRICTED_VOLUME_TYPES - {"hostPath"}):
            problems.append(f"{where}.{source}: volume type not allowed (allowed: {sorted(RESTRICTED_VOLUME_TYPES)})")

    # baseline: Sysctls.
    for index, sysctl in enumerate(pod_sc.get("sysctls") or []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"spec.securityContext.sysctls[{index}]: unsafe sysctl {sysctl.get('name')!r}")

    # baseline: AppArmor (annotations, and the field since 1.30).
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            problems.append(f"metadata.annotations[{key}]: AppArmor profile {value!r} not allowed")
    problems += _apparmor("spec.securityContext", pod_sc)

    # baseline: SELinux (pod level).
    problems += _selinux("spec.securityContext", pod_sc)

    # baseline + restricted: Seccomp (pod level).
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append(f"spec.securityContext.seccompProfile.type: {pod_seccomp!r} (RuntimeDefault or Localhost)")

    # restricted: Running as Non-root user (pod level).
    if pod_sc.get("runAsUser") == 0:
        problems.append("spec.securityContext.runAsUser: must not be 0")

    for where, container in containers:
        sc: Mapping[str, Any] = container.get("securityContext") or {}
        prefix = f"{where}.securityContext"

        # baseline: Privileged Containers, HostProcess, /proc Mount.
        if sc.get("privileged"):
            problems.append(f"{prefix}.privileged: must be unset or false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{prefix}.windowsOptions.hostProcess: must be unset or false")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{prefix}.procMount: must be unset or Default")
        problems += _apparmor(prefix, sc)
        problems += _selinux(prefix, sc)

        # baseline: Host Ports.
        for index, port in enumerate(container.get("ports") or []):
            if port.get("hostPort"):
                problems.append(f"{where}.ports[{index}].hostPort: must be unset or 0")

        # restricted: Privilege Escalation (must be explicitly false).
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{prefix}.allowPrivilegeEscalation: must be false")

        # restricted: Running as Non-root.
        if sc.get("runAsNonRoot") is False or (
            sc.get("runAsNonRoot") is None and pod_sc.get("runAsNonRoot") is not True
        ):
            problems.append(f"{prefix}.runAsNonRoot: must be true (here or in spec.securityContext)")

        # restricted: Running as Non-root user.
        if sc.get("runAsUser") == 0:
            problems.append(f"{prefix}.runAsUser: must not be 0")

        # restricted: Seccomp (set on the pod or on every container, never Unconfined).
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{prefix}.seccompProfile.type: {seccomp!r} (RuntimeDefault or Localhost)")
        elif seccomp is None and pod_seccomp is None:
            problems.append(f"{prefix}.seccompProfile.type: must be set here or in spec.securityContext")

        # baseline + restricted: Capabilities.
        capabilities: Mapping[str, Any] = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{prefix}.capabilities.drop: must contain ALL")
        for capability in capabilities.get("add") or []:
            if capability not in RESTRICTED_ADDABLE_CAPABILITIES:
                problems.append(f"{prefix}.capabilities.add: {capability!r} not allowed (only NET_BIND_SERVICE)")

    return problems


def _apparmor(prefix: str, sc: Mapping[str, Any]) -> list[str]:
    kind = (sc.get("appArmorProfile") or {}).get("type")
    if kind is not None and kind not in ("RuntimeDefault", "Localhost"):
        return [f"{prefix}.appArmorProfile.type: {kind!r} not allowed (RuntimeDefault or Localhost)"]
    return []


def _selinux(prefix: str, sc: Mapping[str, Any]) -> list[str]:
    options: Mapping[str, Any] = sc.get("seLinuxOptions") or {}
    problems = []
    if options.get("type", "") not in SELINUX_TYPES:
        problems.append(f"{prefix}.seLinuxOptions.type: {options['type']!r} not allowed")
    for field in ("user", "role"):
        if options.get(field):
            problems.append(f"{prefix}.seLinuxOptions.{field}: must be unset")
    return problems


def assert_restricted(manifest: Mapping[str, Any]) -> None:
    """Fail with every violation listed when the pod does not meet the ``restricted`` profile."""
    problems = restricted_violations(manifest)
    name = (manifest.get("metadata") or {}).get("name", "?")
    assert not problems, f"{manifest.get('kind', 'pod')} {name} is not PSS restricted:\n  " + "\n  ".join(problems)
