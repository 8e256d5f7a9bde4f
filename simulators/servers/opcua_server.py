"""OPC UA server (asyncua 2.1) that exposes machine models, e.g. the coater.

Address space (OPC 40001-1 Machinery style: a ``Machines`` folder with one object per machine, below it the
functional groups of the machine), for a machine registered as ``Coater01`` with a point ``Dryer.Zone03.AirTemp``::

    Objects/
      Machines/                        folder,   ns=<urn:cellgate:simulators>;s=Machines
       Coater01/                       object,   s=Coater01
        Dryer/                         object,   s=Coater01.Dryer
          Zone03/                      object,   s=Coater01.Dryer.Zone03
            AirTemp                    variable, s=Coater01.Dryer.Zone03.AirTemp   (Double)
              EURange                  property, s=Coater01.Dryer.Zone03.AirTemp.EURange          (Range)
              EngineeringUnits         property, s=Coater01.Dryer.Zone03.AirTemp.EngineeringUnits (EUInformation)

Node ids are strings in the namespace ``urn:cellgate:simulators`` (resolve its index by URI; it is 2 on this
server but clients must not rely on that). Variant types follow the point's data type (Double, Int32, UInt32,
Boolean, String). Double points with a range (analog values) carry an ``EURange`` property, points with a unit an
``EngineeringUnits`` property (UNECE code where one is known, the UCUM code as display name). No object holds more
than ``MAX_VARIABLES_PER_OBJECT`` (100) variables: the models group their points (per dryer zone, per functional
group), and the server refuses a machine that breaks the rule, because asyncua's ``add_variable`` slows down
quadratically with the children of one parent and browsing clients page through big objects.

Every step writes every value with a DataValue that carries both the source and the server timestamp: a bare
DataValue would leave both None (library notes §2.5). The endpoint is ``opc.tcp://127.0.0.1:{port}/``, bound to
127.0.0.1 unless another host is given, with SecurityPolicy None only; with ``security=ServerSecurity(...)`` it
offers every secure policy and mode instead (no None), a server certificate kept in a PKI folder, and a user
database (user name + password, X.509 user certificates).

Faults (``simulators.faults``): ``await server.set_fault(Hang(), duration_s=5)``, ``await server.clear_faults()``,
``await server.drop_connections()``, ``await server.restart(extra_namespaces=1)``. Connection faults act in a
subclass of asyncua's per-connection protocol (asyncua 2.1 builds it inside ``Server.start``, so that method is
re-done here with our ``BinaryServer``); point faults act when values are written.

Result FIFOs (``simulators.machines.results``): a machine's ``Result.Ack`` variable is the one writable node. The
server never writes it after creating it; every publish reads it first and hands a new value to the model
(``ack_result``), so the record a client acknowledged is gone from the values written in the same publish.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from asyncua import ua
from asyncua.common.connection import TransportLimits
from asyncua.common.node import Node
from asyncua.common.utils import Buffer
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.internal_server import InternalServer
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from simulators.faults import BadValue, Fault, FaultKind, Freeze, Restart, check_points
from simulators.machines.coater import Coater
from simulators.machines.points import DataType, Machine, PointSpec, Value
from simulators.machines.results import ACK_POINT, Acknowledging
from simulators.servers.address_map import MACHINES_FOLDER, MAX_VARIABLES_PER_OBJECT, NAMESPACE_URI, node_id_string
from simulators.servers.clock import AutoStepper, check_rate
from simulators.servers.fault_gate import FaultControlledServer, FaultGate
from simulators.servers.opcua_structures import StructureTypes, add_coater_extras, add_structure_types, coater_extras

__all__ = [
    "NAMESPACE_URI",
    "SECURE_POLICIES",
    "VARIANT_TYPES",
    "OpcUaSimulatorServer",
    "ServerSecurity",
    "check_variables_per_object",
    "node_id_string",
]

# Registered before NAMESPACE_URI by a restart with extra namespaces, to move its index.
DUMMY_NAMESPACE_URI = "urn:cellgate:simulators:dummy:{n}"
APPLICATION_URI = "urn:cellgate:simulators:opcua-server"
RESTART_STOP_TIMEOUT_S = 5.0
"""How long a restart waits for asyncua's own stop before it closes the listener itself and starts again."""

SECURE_POLICIES: tuple[ua.SecurityPolicyType, ...] = (
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSecurity:
    """Secure endpoints for the simulator.

    ``pki_dir``: the server's certificate is ``own/cert.der`` (key ``own/private/key.pem``), made on first start
    and kept, so a client trusts it once. ``certificate``/``key`` replace it (tests: expired, wrong URI).
    ``users``: user name -> password; ``user_certificates``: SHA-1 thumbprints of accepted X.509 user
    certificates. With neither, sessions are anonymous. ``policies``: the endpoints offered.
    """

    pki_dir: Path
    users: Mapping[str, str] = field(default_factory=dict)
    user_certificates: frozenset[str] = frozenset()
    certificate: x509.Certificate | None = None
    key: rsa.RSAPrivateKey | None = None
    policies: tuple[ua.SecurityPolicyType, ...] = SECURE_POLICIES

    def load_or_create(self) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        if self.certificate is not None and self.key is not None:
            return self.certificate, self.key
        cert_path = self.pki_dir / "own" / "cert.der"
        key_path = self.pki_dir / "own" / "private" / "key.pem"
        if cert_path.exists() and key_path.exists():
            cert = x509.load_der_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{key_path} is not an RSA key")
            return cert, key
        key = cert_gen.generate_private_key()
        hosts = sorted({"localhost", socket.gethostname()})
        alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(APPLICATION_URI)]
        alt += [x509.DNSName(host) for host in hosts]
        cert = cert_gen.generate_self_signed_app_certificate(
            key, "Cellgate simulators", {}, alt,
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], days=365,
        )  # fmt: skip
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(cert_gen.dump_private_key_as_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        return cert, key


class _UserDatabase(UserManager):
    """asyncua user manager: the users of a ServerSecurity; anonymous only when it has none."""

    def __init__(self, security: ServerSecurity) -> None:
        self._security = security

    def get_user(
        self, iserver: InternalServer, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        der: bytes
        if username is not None:
            known = self._security.users.get(username)
            return User(role=UserRole.User, name=username) if known is not None and known == password else None
        if certificate is not None and self._security.user_certificates:
            der = (
                certificate if isinstance(certificate, bytes) else certificate.public_bytes(serialization.Encoding.DER)
            )
            thumb = hashlib.sha1(der, usedforsecurity=False).hexdigest()
            if thumb in self._security.user_certificates:
                return User(role=UserRole.User, name=thumb)
        if self._security.users or self._security.user_certificates:
            return None
        return User(role=UserRole.User)


VARIANT_TYPES: Mapping[DataType, ua.VariantType] = {
    DataType.DOUBLE: ua.VariantType.Double,
    DataType.INT32: ua.VariantType.Int32,
    DataType.UINT32: ua.VariantType.UInt32,
    DataType.BOOLEAN: ua.VariantType.Boolean,
    DataType.STRING: ua.VariantType.String,
}

# UNECE Recommendation 20 common codes for the UCUM units the models use (OPC 10000-8 §5.6.3 EUInformation).
_UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"
_UNECE_CODES: Mapping[str, str] = {
    "Cel": "CEL", "m/min": "2X", "m": "MTR", "N": "NEW", "{rev}/min": "RPM", "L/min": "L2", "bar": "BAR",
    "um": "4H", "g/m2": "GM", "%": "P1", "kW": "KWT", "kW.h": "KWH", "V": "VLT", "A": "AMP", "A.h": "AMH",
    "W.h": "WHR", "kPa": "KPA", "s": "SEC", "kN": "B47", "mm": "MMT", "W": "WTT", "deg": "DD", "m3/h": "MQH",
    "kg/h": "E93", "g/cm3": "23", "MOhm": "B75",
}


def check_variables_per_object(machine: str, points: Iterable[PointSpec]) -> None:
    """Raise ValueError if a machine's points would put more than MAX_VARIABLES_PER_OBJECT variables in one object."""
    counts = Counter(point.name.rpartition(".")[0] for point in points)
    crowded = sorted(f"{machine}.{parent}".rstrip(".") for parent, n in counts.items() if n > MAX_VARIABLES_PER_OBJECT)
    if crowded:
        raise ValueError(f"more than {MAX_VARIABLES_PER_OBJECT} variables in one object: {crowded[:3]}; "
                         "group the points into sub-objects")


def _string_node_id(identifier: str, namespace_index: int) -> ua.NodeId:
    return ua.NodeId(ua.String(identifier), ua.Int16(namespace_index), ua.NodeIdType.String)


def _unece_unit_id(code: str) -> int:
    """UnitId of a UNECE common code: its (up to 3) ASCII characters packed big-endian into an Int32."""
    unit_id = 0
    for char in code:
        unit_id = (unit_id << 8) | ord(char)
    return unit_id


def _eu_information(ucum: str) -> ua.EUInformation:
    code = _UNECE_CODES.get(ucum)
    return ua.EUInformation(
        NamespaceUri=_UNECE_NAMESPACE if code else "http://unitsofmeasure.org",
        UnitId=_unece_unit_id(code) if code else -1,
        DisplayName=ua.LocalizedText(ucum),
        Description=ua.LocalizedText(f"UCUM {ucum}"),
    )


def check_port_free(host: str, port: int) -> None:
    """Fail in a millisecond, with a clear message, instead of after the ~1 s ``Server.init()``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server does
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OSError(exc.errno, f"OPC UA simulator cannot listen on {host}:{port}: {exc.strerror}") from exc


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (asyncua would advertise port 0 in its endpoints if bound to 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class _FaultGatedProtocol(OPCUAProtocol):
    """asyncua's per-connection protocol with the fault hooks in front of the message processor."""

    def __init__(self, gate: FaultGate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._gate.refuses_connections():
            transport.close()
            return
        super().connection_made(transport)

    async def _process_one_msg(self, header: Any, buf: Buffer) -> bool:
        # Held, never dropped: chunks carry sequence numbers and a gap would break the secure channel.
        await self._gate.wait_while_hung()
        await self._gate.delay()
        await self._gate.wait_while_hung()
        return await super()._process_one_msg(header, buf)


class _FaultGatedBinaryServer(BinaryServer):
    def __init__(
        self, internal_server: InternalServer, hostname: str, port: int, limits: TransportLimits, gate: FaultGate
    ) -> None:
        super().__init__(internal_server, hostname, port, limits)
        self._gate = gate

    def _make_protocol(self) -> OPCUAProtocol:
        return _FaultGatedProtocol(
            self._gate, iserver=self.iserver, policies=self._policies, clients=self.clients,
            closing_tasks=self.closing_tasks, limits=self.limits,
        )


class _FaultGatedServer(Server):
    def __init__(self, gate: FaultGate, user_manager: _UserDatabase | None = None) -> None:
        super().__init__(user_manager=user_manager)
        self._gate = gate

    async def start(self) -> None:
        # asyncua 2.1.0 Server.start, with our BinaryServer (no certificate check: SecurityPolicy None only).
        await self._setup_server_nodes()
        await self.iserver.start()
        try:
            host, port = self._get_bind_socket_info()
            if host is None or port is None:
                raise RuntimeError("the OPC UA simulator needs an endpoint with host and port")
            self.bserver = _FaultGatedBinaryServer(self.iserver, host, port, self.limits, self._gate)
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except Exception:
            await self.iserver.stop()
            raise

    def drop_connections(self) -> int:
        transports = list(self.iserver.asyncio_transports)
        for transport in transports:
            transport.close()
        return len(transports)


class OpcUaSimulatorServer(FaultControlledServer):
    """Serves ``machines`` (name -> model) over OPC UA and steps them at ``step_hz``.

    ``async with OpcUaSimulatorServer(machines={"Coater01": coater}, port=4840) as server: ...``
    Port 0 picks a free port before binding (read it back from ``server.port`` / ``server.endpoint``).
    With ``autostep=False`` nothing moves unless the caller calls ``await server.step(dt_s)``.
    """

    def __init__(
        self,
        *,
        machines: Mapping[str, Machine],
        port: int = 4840,
        host: str = "127.0.0.1",
        step_hz: float = 5.0,
        speedup: float = 1.0,
        autostep: bool = True,
        security: ServerSecurity | None = None,
    ) -> None:
        check_rate(step_hz=step_hz, speedup=speedup)
        if not machines:
            raise ValueError("an OPC UA simulator needs at least one machine")
        for machine_name, machine in machines.items():
            check_variables_per_object(machine_name, machine.points)
        self._machines = dict(machines)
        self._host = host
        self._port = port
        self._step_hz = step_hz
        self._speedup = speedup
        self._autostep = autostep
        self._security = security
        self._server: _FaultGatedServer | None = None
        self._namespace_index = -1
        # (machine name, machine, point name, node id, variant type) for every variable, in point order.
        self._variables: list[tuple[str, Machine, str, ua.NodeId, ua.VariantType]] = []
        self._acks: list[tuple[Acknowledging, ua.NodeId]] = []  # (machine, its Result.Ack node)
        # Coaters also serve a profile array and structures (simulators.servers.opcua_structures).
        self._structure_types: StructureTypes | None = None
        self._extras: list[tuple[Coater, int, dict[str, ua.NodeId]]] = []
        self._stepper: AutoStepper | None = None
        self._gate = FaultGate()
        self._restarting = False
        self._publish_lock = asyncio.Lock()

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self._host}:{self._port}/"

    @property
    def namespace_index(self) -> int:
        return self._namespace_index

    async def __aenter__(self) -> Self:
        if self._port == 0:
            self._port = pick_free_port(self._host)
        check_port_free(self._host, self._port)
        server = await self._start_server(extra_namespaces=0)
        try:
            await self.publish()
            if self._autostep:
                self._stepper = AutoStepper(
                    name=f"sim.opcua[{self._port}].step", step_hz=self._step_hz, speedup=self._speedup, step=self.step
                )
                self._stepper.start()
        except BaseException:
            await server.stop()
            self._server = None
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stepper, self._stepper = self._stepper, None
        if stepper is not None:
            await stepper.stop()
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def _start_server(self, *, extra_namespaces: int) -> _FaultGatedServer:
        security = self._security
        server = _FaultGatedServer(self._gate, _UserDatabase(security) if security is not None else None)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("Cellgate equipment simulators")
        await server.set_application_uri(APPLICATION_URI)
        if security is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            cert, key = await asyncio.to_thread(security.load_or_create)
            await server.load_certificate(cert.public_bytes(serialization.Encoding.DER))
            await server.load_private_key(
                key.private_bytes(
                    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            server.set_security_policy(list(security.policies))
            tokens: list[type] = []
            if not security.users and not security.user_certificates:
                tokens.append(ua.AnonymousIdentityToken)
            if security.users:
                tokens.append(ua.UserNameIdentityToken)
            if security.user_certificates:
                tokens.append(ua.X509IdentityToken)
            server.set_identity_tokens(tokens)
        for n in range(1, extra_namespaces + 1):
            await server.register_namespace(DUMMY_NAMESPACE_URI.format(n=n))
        self._namespace_index = await server.register_namespace(NAMESPACE_URI)
        self._variables = []
        self._acks = []
        self._extras = []
        self._structure_types = None
        if any(isinstance(machine, Coater) for machine in self._machines.values()):
            self._structure_types = await add_structure_types(server, self._namespace_index)
        folder = await server.nodes.objects.add_folder(
            _string_node_id(MACHINES_FOLDER, self._namespace_index),
            ua.QualifiedName(MACHINES_FOLDER, self._namespace_index),
        )
        for machine_name, machine in self._machines.items():
            await self._add_machine(server, folder, machine_name, machine)
        await server.start()
        self._server = server
        return server

    # -------------------------------------------------------------------------------------------- faults

    @property
    def machines(self) -> tuple[str, ...]:
        return tuple(self._machines)

    async def set_fault(self, fault: Fault | Restart, *, duration_s: float | None = None) -> None:
        """Start ``fault`` for ``duration_s`` seconds (None: until cleared; ``DropConnections`` defaults to 0).

        Behaviour on the wire is documented in ``simulators.faults``. Connection faults (drop, hang, latency)
        affect every machine of this server. ``Restart`` runs ``restart()`` (``duration_s`` is not used).
        Raises ValueError for a Modbus exception fault, an unknown machine, point or status name.
        """
        if isinstance(fault, Restart):
            await self.restart(extra_namespaces=fault.extra_namespaces, down_s=fault.down_s)
            return
        if fault.kind is FaultKind.EXCEPTION:
            raise ValueError("Modbus exception codes only exist on the Modbus simulator")
        if isinstance(fault, BadValue | Freeze):
            check_points(fault, {name: [p.name for p in m.points] for name, m in self._machines.items()})
        if isinstance(fault, BadValue) and not isinstance(getattr(StatusCodes, fault.status, None), int):
            raise ValueError(f"unknown OPC UA status code name {fault.status!r} (e.g. BadSensorFailure)")
        await self._start_fault(fault, duration_s=duration_s)

    async def restart(self, *, extra_namespaces: int = 1, down_s: float = 0.0) -> None:
        """Stop the server, wait ``down_s`` s, start it again on the same port with ``extra_namespaces`` dummy
        namespaces registered before ours (its index becomes 2 + extra_namespaces). Models keep stepping
        meanwhile; their values are not written while the server is down. Point faults stay active.
        """
        Restart(extra_namespaces=extra_namespaces, down_s=down_s)  # validates
        server = self._require_server()
        self._restarting = True
        try:
            async with self._publish_lock:
                self._server = None
                # Close the client connections first: asyncua's stop() waits for its connection tasks and the
                # listening server to close, which can otherwise wait on a connected client for many seconds.
                server.drop_connections()
                try:
                    await asyncio.wait_for(server.stop(), RESTART_STOP_TIMEOUT_S)
                except TimeoutError:
                    # asyncua got stuck closing a session: close what is left ourselves so the port is free.
                    server.drop_connections()
                    listener = server.bserver._server if server.bserver is not None else None
                    if listener is not None:
                        listener.close()
                if down_s > 0.0:
                    await asyncio.sleep(down_s)
                await self._start_server(extra_namespaces=extra_namespaces)
        finally:
            self._restarting = False
        await self.publish()

    async def join(self) -> None:
        """Wait for the stepping task to end and re-raise its error. Never returns while all is well."""
        if self._stepper is None:
            await asyncio.Event().wait()
        else:
            await self._stepper.join()

    async def step(self, dt_s: float) -> None:
        """Advance every machine by ``dt_s`` seconds of model time and write the new values."""
        for machine in self._machines.values():
            machine.step(dt_s)
        await self.publish()

    async def publish(self) -> None:
        """Write the current value of every point, stamped with the current time (source and server).

        Point faults apply here: frozen points are not written, bad ones carry their status code. Nothing is
        written while a restart is in progress.
        """
        if self._restarting:
            return
        async with self._publish_lock:
            server = self._require_server()
            now = cast(ua.DateTime, datetime.now(UTC))  # ua.DateTime is datetime at run time
            self._read_acks(server)
            current: dict[int, Mapping[str, Value]] = {id(m): m.values() for m in self._machines.values()}
            state = self._gate.state
            clock = self._gate.now()
            faulty = bool(state.point_faults(clock))
            for machine_name, machine, point, node_id, variant_type in self._variables:
                if point == ACK_POINT and isinstance(machine, Acknowledging):
                    continue  # the client's to write
                value = current[id(machine)][point]
                status = ua.StatusCode()
                if faulty:
                    if state.is_frozen(machine=machine_name, point=point, now=clock):
                        continue
                    bad = state.bad_status(machine=machine_name, point=point, now=clock)
                    if bad is not None:
                        status = ua.StatusCode(getattr(StatusCodes, bad))
                await server.write_attribute_value(
                    node_id,
                    ua.DataValue(ua.Variant(value, variant_type), StatusCode=status,
                                 SourceTimestamp=now, ServerTimestamp=now),
                )
            for coater, zones, nodes in self._extras:
                if self._structure_types is None:
                    break
                for point, variant in coater_extras(coater, self._structure_types, zones).items():
                    await server.write_attribute_value(
                        nodes[point], ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now))

    def _read_acks(self, server: _FaultGatedServer) -> None:
        for machine, node_id in self._acks:
            written = server.read_attribute_value(node_id).Value
            value = written.Value if written is not None else None
            if isinstance(value, int) and value != machine.ack_seen:
                machine.ack_result(value)

    def _require_server(self) -> _FaultGatedServer:
        if self._server is None:
            raise RuntimeError("the OPC UA simulator is not running (use it as an async context manager)")
        return self._server

    async def _add_machine(self, server: Server, folder: Node, machine_name: str, machine: Machine) -> None:
        idx = self._namespace_index
        root = await folder.add_object(_string_node_id(machine_name, idx), ua.QualifiedName(machine_name, idx))
        folders: dict[str, Node] = {"": root}
        values = machine.values()
        for point in machine.points:
            *path, leaf = point.name.split(".")
            parent = await self._ensure_folder(folders, machine_name, path)
            variant_type = VARIANT_TYPES[point.data_type]
            identifier = node_id_string(machine_name, point.name)
            node_id = _string_node_id(identifier, idx)
            variable = await parent.add_variable(
                node_id, ua.QualifiedName(leaf, idx), ua.Variant(values[point.name], variant_type)
            )
            await self._describe(server, variable, identifier, point)
            if point.name == ACK_POINT and isinstance(machine, Acknowledging):
                await variable.set_writable()
                self._acks.append((machine, node_id))
            self._variables.append((machine_name, machine, point.name, node_id, variant_type))
        if isinstance(machine, Coater) and self._structure_types is not None:
            zones = sum(1 for key in folders if key.startswith("Dryer.Zone"))
            nodes = await add_coater_extras(folders, machine_name, machine, self._structure_types, idx, zones)
            self._extras.append((machine, zones, nodes))

    async def _ensure_folder(self, folders: dict[str, Node], machine_name: str, path: list[str]) -> Node:
        key = ""
        node = folders[""]
        for segment in path:
            key = f"{key}.{segment}" if key else segment
            child = folders.get(key)
            if child is None:
                child = await node.add_object(
                    _string_node_id(node_id_string(machine_name, key), self._namespace_index),
                    ua.QualifiedName(segment, self._namespace_index),
                )
                folders[key] = child
            node = child
        return node

    async def _describe(self, server: Server, variable: Node, identifier: str, point: PointSpec) -> None:
        idx = self._namespace_index
        await server.write_attribute_value(
            variable.nodeid,
            ua.DataValue(ua.Variant(ua.LocalizedText(point.description), ua.VariantType.LocalizedText)),
            AttributeIds.Description,
        )
        if point.data_type is DataType.DOUBLE and point.min is not None and point.max is not None:
            await variable.add_property(
                _string_node_id(f"{identifier}.EURange", idx), "EURange",
                ua.Variant(ua.Range(Low=float(point.min), High=float(point.max)), ua.VariantType.ExtensionObject),
                datatype=ua.NodeId(ua.Int32(ObjectIds.Range)),
            )
        if point.unit is not None:
            await variable.add_property(
                _string_node_id(f"{identifier}.EngineeringUnits", idx), "EngineeringUnits",
                ua.Variant(_eu_information(point.unit), ua.VariantType.ExtensionObject),
                datatype=ua.NodeId(ua.Int32(ObjectIds.EUInformation)),
            )
