"""Starts moto in server mode with the AWS behaviour edgeroute's tests need
and moto lacks, patched into its Python backends before the server starts:

- RDS FailoverGlobalCluster and SwitchoverGlobalCluster: the global cluster
  shows FailoverState while the operation runs, then the target member
  becomes the writer. How long it runs is EDGEROUTE_MOTO_FAILOVER_SECONDS
  (default 1.0).
  A test can hold writer changes running: `POST /edgeroute/failover/hold`;
  `POST /edgeroute/failover/release` finishes every held one and stops
  holding.
- Route 53 GetHealthCheckStatus: moto always answers Success; here every
  checker reports Failure while the latest CloudWatch AWS/Route53
  HealthCheckStatus datapoint for the check is 0, as Route 53 itself does,
  and a calculated check is refused (InvalidInput): Route 53 has no
  checkers' reports of one.
- Route 53 ChangeResourceRecordSets: a DELETE of a record with a set
  identifier deletes that record alone (its name, type and identifier), as
  Route 53 does; moto deletes every record of the zone with the identifier.
  And a batch is checked whole against the zone before any of it applies,
  as Route 53 does: a DELETE of a record that is not there, or whose values
  differ from the ones given, and a CREATE of one that is there, refuse the
  batch (InvalidChangeBatch) and change nothing; moto applies a batch
  change by change and lets a DELETE of a missing record pass.
- A test can hold requests of one action (ChangeResourceRecordSets,
  DescribeGlobalClusters, or GetMetricStatistics/<namespace> such as
  GetMetricStatistics/AWS/RDS) before moto serves them, to change AWS
  between a command's reads and its change, or to stand for an API that
  hangs: `POST /edgeroute/hold/<action>`;
  `GET /edgeroute/held/<action>` says how many wait;
  `POST /edgeroute/release/<action>` lets them go (changes apply one at a
  time).
- A test can have the answer to the next request of an action
  (SwitchoverGlobalCluster, ChangeResourceRecordSets) lost: `POST
  /edgeroute/lose-answer/<action>`; moto serves the request, and the
  client gets 503 ServiceUnavailable instead of its answer, as when a
  connection drops after AWS took a request.
- A test can make every request of an action fail, unserved, with 503
  ServiceUnavailable (Route 53's API down, say): `POST
  /edgeroute/fail/<action>`; `POST /edgeroute/mend/<action>` ends it.
- Route 53 ListResourceRecordSets pages through records of one name and
  type by set identifier (StartRecordIdentifier, NextRecordIdentifier), as
  Route 53 does; moto ignores the identifier, so a name with more records
  than a page is listed from its first page again.
- `GET /edgeroute/pid` answers the launcher's process id, so that its
  starter knows its own launcher answers on the port.

Usage: python launcher.py --port PORT [--host 127.x.y.z]   (loopback only)
"""

import argparse
import io
import os
import sys
import threading

PINNED = "5.2.5"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    import moto

    if moto.__version__ != PINNED:
        print(
            f"moto {moto.__version__} is installed; these patches are written for moto {PINNED}: "
            f"pip install 'moto[server]=={PINNED}' (scripts/test.sh does)",
            file=sys.stderr,
        )
        return 2
    patch_rds()
    patch_route53()
    patch_cloudwatch()

    from werkzeug.serving import run_simple
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app = with_test_controls(DomainDispatcherApplication(create_backend_app))
    if not args.host.startswith("127."):
        print(f"--host must be a loopback address, got {args.host}", file=sys.stderr)
        return 2
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)
    return 0


# Writer changes held by a test, and whether new ones are held.
HELD = {"hold": False, "pending": []}
HELD_LOCK = threading.Lock()
# A writer change's end (members' roles and FailoverState) and a
# DescribeGlobalClusters answer are one step each: an answer read while
# a change ends would otherwise show the old writer with no FailoverState,
# which AWS never answers.
VIEW_LOCK = threading.Lock()

# Actions whose next answers a test has lost, and how many.
LOSE = {}


# Actions a test has made fail: each request is answered 503, unserved.
FAIL = set()


def action_of(environ):
    """The AWS action a request asks for: Route 53's record calls are told
    by their path, JSON-protocol calls by their target header, the others
    by the form body (read, and put back for moto)."""
    from urllib.parse import parse_qs

    if environ.get("PATH_INFO", "").endswith("/rrset"):
        if environ.get("REQUEST_METHOD") == "POST":
            return "ChangeResourceRecordSets"
        return "ListResourceRecordSets"
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return target.rsplit(".", 1)[-1]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]


def lose_answer(action):
    """Whether this request's answer is to be lost."""
    with GATE:
        if LOSE.get(action, 0) > 0:
            LOSE[action] -= 1
            return True
    return False


# Actions held by a test, and how many requests of each wait.
GATES = {"held": set(), "waiting": {}}
GATE = threading.Condition()


def with_test_controls(app):
    """Serves the tests' controls (/edgeroute/...: writer changes held,
    requests held, answers lost) in front of moto."""

    def wrapped(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/edgeroute/pid":
            # Who answers on this port: the starter waits for its own
            # launcher, not for something else already listening there.
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [f"{os.getpid()}\n".encode()]
        if environ.get("REQUEST_METHOD") == "POST" and path in ("/edgeroute/failover/hold", "/edgeroute/failover/release"):
            with HELD_LOCK:
                if path.endswith("/hold"):
                    HELD["hold"] = True
                    pending = []
                else:
                    HELD["hold"] = False
                    pending, HELD["pending"] = HELD["pending"], []
            for finish in pending:
                finish()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [f"released {len(pending)}\n".encode()]
        if path.startswith(("/edgeroute/hold/", "/edgeroute/held/", "/edgeroute/release/")):
            return gate(environ.get("REQUEST_METHOD"), path, start_response)
        if environ.get("REQUEST_METHOD") == "POST" and path.startswith("/edgeroute/lose-answer/"):
            with GATE:
                action = path.rsplit("/", 1)[1]
                LOSE[action] = LOSE.get(action, 0) + 1
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if environ.get("REQUEST_METHOD") == "POST" and path.startswith(("/edgeroute/fail/", "/edgeroute/mend/")):
            _, _, verb, action = path.split("/", 3)
            with GATE:
                (FAIL.add if verb == "fail" else FAIL.discard)(action)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if not (LOSE or FAIL):
            return app(environ, start_response)
        action = action_of(environ)
        with GATE:
            failing = action in FAIL
        if failing:
            return unavailable(start_response, b"the service is unavailable")
        if lose_answer(action):
            # Served, then the answer is lost on its way.
            for _ in app(environ, lambda *args: (lambda data: None)):
                pass
            return unavailable(start_response, b"the answer was lost")
        return app(environ, start_response)

    return wrapped


def unavailable(start_response, message):
    start_response("503 Service Unavailable", [("Content-Type", "text/xml")])
    return [
        b"<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code>"
        b"<Message>" + message + b"</Message></Error><RequestId>edgeroute</RequestId></ErrorResponse>"
    ]


def gate(method, path, start_response):
    """Serves /edgeroute/{hold,held,release}/<action>."""
    _, _, verb, action = path.split("/", 3)
    with GATE:
        if method == "POST" and verb == "hold":
            GATES["held"].add(action)
        elif method == "POST" and verb == "release":
            GATES["held"].discard(action)
            GATE.notify_all()
        elif method != "GET" or verb != "held":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such path\n"]
        waiting = GATES["waiting"].get(action, 0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{waiting}\n".encode()]


def wait_while_held(action):
    """Waits while a test holds `action` (60 s at most)."""
    with GATE:
        if action not in GATES["held"]:
            return
        GATES["waiting"][action] = GATES["waiting"].get(action, 0) + 1
        GATE.wait_for(lambda: action not in GATES["held"], timeout=60)
        GATES["waiting"][action] -= 1


def patch_cloudwatch() -> None:
    from moto.cloudwatch.models import CloudWatchBackend

    original = CloudWatchBackend.get_metric_statistics

    def get_metric_statistics(self, namespace, *args, **kwargs):
        wait_while_held(f"GetMetricStatistics/{namespace}")
        return original(self, namespace, *args, **kwargs)

    CloudWatchBackend.get_metric_statistics = get_metric_statistics


def patch_rds() -> None:
    from moto.rds import models, responses
    from moto.rds.exceptions import DBClusterNotFoundError, InvalidParameterValue

    delay = float(os.environ.get("EDGEROUTE_MOTO_FAILOVER_SECONDS", "1.0"))
    models.GlobalCluster.failover_state = None

    def find_member(global_cluster, target):
        for member in global_cluster.members:
            if target in (member.db_cluster_arn, member.db_cluster_identifier):
                return member
        raise DBClusterNotFoundError(target)

    def move_writer(self, global_cluster_identifier, target, allow_data_loss, status):
        gc = self.global_clusters.get(global_cluster_identifier)
        if gc is None:
            raise InvalidParameterValue(f"global cluster {global_cluster_identifier} not found")
        target_member = find_member(gc, target)
        # Checked and set as one step: of concurrent requests, one wins.
        with HELD_LOCK:
            if gc.failover_state is not None:
                raise InvalidParameterValue(f"global cluster {global_cluster_identifier} is already {gc.failover_state['Status']}")
            source = next((m for m in gc.members if m.is_writer), None)
            if source is target_member:
                raise InvalidParameterValue(f"{target} is already the writer")
            gc.failover_state = {
                "Status": status,
                "FromDbClusterArn": source.db_cluster_arn if source else "",
                "ToDbClusterArn": target_member.db_cluster_arn,
                "IsDataLossAllowed": bool(allow_data_loss),
            }

        def finish():
            with VIEW_LOCK:
                if source is not None:
                    source.is_writer = False
                target_member.is_writer = True
                gc.failover_state = None

        with HELD_LOCK:
            if HELD["hold"]:
                HELD["pending"].append(finish)
                return gc
        timer = threading.Timer(delay, finish)
        timer.daemon = True
        timer.start()
        return gc

    def backend_failover(self, global_cluster_identifier, target, allow_data_loss, switchover):
        status = "switching-over" if switchover else "failing-over"
        return move_writer(self, global_cluster_identifier, target, allow_data_loss, status)

    models.RDSBackend.failover_global_cluster = backend_failover

    def failover_global_cluster(self):
        p = self.params
        gc = self.global_backend.failover_global_cluster(
            p["GlobalClusterIdentifier"],
            p["TargetDbClusterIdentifier"],
            str(p.get("AllowDataLoss", "false")).lower() == "true",
            str(p.get("Switchover", "false")).lower() == "true",
        )
        return responses.ActionResult({"GlobalCluster": gc})

    def switchover_global_cluster(self):
        p = self.params
        gc = self.global_backend.failover_global_cluster(
            p["GlobalClusterIdentifier"], p["TargetDbClusterIdentifier"], False, True
        )
        return responses.ActionResult({"GlobalCluster": gc})

    responses.RDSResponse.failover_global_cluster = failover_global_cluster
    responses.RDSResponse.switchover_global_cluster = switchover_global_cluster

    # The answer is written out after the action's method returns: the
    # whole call, written answer included, holds the lock.
    call_action = responses.RDSResponse.call_action

    def call_action_whole(self):
        if self._get_action() != "DescribeGlobalClusters":
            return call_action(self)
        wait_while_held("DescribeGlobalClusters")
        with VIEW_LOCK:
            return call_action(self)

    responses.RDSResponse.call_action = call_action_whole


def patch_route53() -> None:
    from moto.route53 import responses
    from moto.cloudwatch.models import cloudwatch_backends, MetricDatum
    from moto.core.utils import utcnow

    def latest_status(account_id, health_check_id):
        backend = cloudwatch_backends[account_id]["us-east-1"]
        latest = None
        for datum in backend.metric_data:
            if not isinstance(datum, MetricDatum):
                continue
            if datum.namespace != "AWS/Route53" or datum.name != "HealthCheckStatus":
                continue
            if not any(d.name == "HealthCheckId" and d.value == health_check_id for d in datum.dimensions):
                continue
            if latest is None or datum.timestamp >= latest.timestamp:
                latest = datum
        return None if latest is None else float(latest.value)

    def get_health_check_status(self):
        health_check_id = self._get_param("HealthCheckId")
        check = self.backend.get_health_check(health_check_id)
        if check.type_ == "CALCULATED":
            from moto.route53.exceptions import InvalidInput

            raise InvalidInput("GetHealthCheckStatus does not report calculated health checks")
        healthy = latest_status(self.current_account, health_check_id) != 0.0
        regions = getattr(check, "regions", None) or ["us-east-1", "eu-west-1", "ap-southeast-1"]
        status = (
            "Success: HTTP Status Code: 200. OK"
            if healthy
            else "Failure: HTTP Status Code: 503. Service Unavailable"
        )
        observations = [
            {
                "Region": region,
                "IPAddress": f"127.0.13.{i + 1}",
                "StatusReport": {"Status": status, "CheckedTime": utcnow()},
            }
            for i, region in enumerate(regions)
        ]
        return responses.ActionResult({"HealthCheckObservations": observations})

    responses.Route53.get_health_check_status = get_health_check_status
    patch_route53_delete()
    patch_route53_paging()


def patch_route53_paging() -> None:
    from moto.route53 import responses
    from moto.route53.exceptions import InvalidInput
    from moto.route53.models import reverse_domain_name

    def key(rrset):
        return (reverse_domain_name(rrset.name), rrset.type, rrset.set_identifier or "")

    def list_resource_record_sets(self):
        zone = self.backend.get_hosted_zone(self._get_param("HostedZoneId"))
        start_name = self._get_param("StartRecordName")
        start_type = self._get_param("StartRecordType") or ""
        start_id = self._get_param("StartRecordIdentifier") or ""
        max_items = self._get_int_param("MaxItems", 300)
        if (start_type and not start_name) or (start_id and not start_type):
            raise InvalidInput("The input is not valid")
        records = sorted(zone.rrsets, key=key)
        if start_name:
            start = (reverse_domain_name(start_name), start_type, start_id)
            records = [r for r in records if key(r) >= start]
        page, rest = records[:max_items], records[max_items:]
        result = {"ResourceRecordSets": page, "IsTruncated": bool(rest), "MaxItems": max_items}
        if rest:
            result["NextRecordName"] = rest[0].name
            result["NextRecordType"] = rest[0].type
            if rest[0].set_identifier:
                result["NextRecordIdentifier"] = rest[0].set_identifier
        return responses.ActionResult(result)

    responses.Route53.list_resource_record_sets = list_resource_record_sets


def patch_route53_delete() -> None:
    from moto.route53.models import Route53Backend

    original = Route53Backend.change_resource_record_sets
    lock = threading.Lock()

    def change_resource_record_sets(self, zoneid, change_list):
        wait_while_held("ChangeResourceRecordSets")
        zone = self.get_hosted_zone(zoneid)
        # Checked here: moto's own check of a CREATE refuses one equal to an
        # earlier change, even after a DELETE of it in the same batch.
        applied = [
            dict(c, Action="UPSERT") if c["Action"] == "CREATE" else c for c in change_list
        ]
        # moto calls zone.delete_rrset_by_id(identifier) for each such
        # DELETE, in order: each call is matched with its change.
        named = iter(
            [
                c["ResourceRecordSet"]
                for c in applied
                if c["Action"] == "DELETE" and "SetIdentifier" in c["ResourceRecordSet"]
            ]
        )

        def delete_rrset_by_id(set_identifier):
            record = next(named)
            name = record["Name"].rstrip(".").lower()
            zone.rrsets = [
                r
                for r in zone.rrsets
                if not (
                    r.name.rstrip(".").lower() == name
                    and r.type == record["Type"]
                    and r.set_identifier == set_identifier
                )
            ]

        with lock:
            check_batch(zone, change_list)
            zone.delete_rrset_by_id = delete_rrset_by_id
            try:
                return original(self, zoneid, applied)
            finally:
                del zone.delete_rrset_by_id

    Route53Backend.change_resource_record_sets = change_resource_record_sets


def record_key(name, record_type, set_identifier):
    return (name.rstrip(".").lower(), record_type, set_identifier)


def values_of(ttl, records, alias, weight, region, health_check):
    """What a DELETE must match: every value of the record."""
    alias_name = None
    if alias:
        alias_name = alias.get("DNSName", "").rstrip(".").lower()
    return (
        None if ttl is None else str(ttl),
        sorted(records or []),
        alias_name,
        None if weight is None else str(weight),
        region,
        health_check,
    )


def check_batch(zone, change_list):
    """Refuses the batch, as Route 53 does, unless every change in it
    holds against the zone as the changes before it leave it."""
    from moto.route53.exceptions import Route53ClientError

    current = {}
    for r in zone.rrsets:
        current[record_key(r.name, r.type, r.set_identifier)] = values_of(
            r.ttl, r.records, r.alias_target, r.weight, r.region, r.health_check_id
        )
    for change in change_list:
        rs = change["ResourceRecordSet"]
        key = record_key(rs["Name"], rs["Type"], rs.get("SetIdentifier"))
        records = [v["Value"] if isinstance(v, dict) else v for v in rs.get("ResourceRecords") or []]
        values = values_of(
            rs.get("TTL"), records, rs.get("AliasTarget"), rs.get("Weight"),
            rs.get("Region"), rs.get("HealthCheckId"),
        )
        described = f"[name='{key[0]}.', type='{key[1]}', set-identifier='{key[2]}']"
        if change["Action"] == "DELETE":
            if key not in current:
                raise Route53ClientError(
                    "InvalidChangeBatch",
                    f"[Tried to delete resource record set {described} but it was not found]",
                )
            if current[key] != values:
                raise Route53ClientError(
                    "InvalidChangeBatch",
                    f"[Tried to delete resource record set {described} but the values provided do not match the current values]",
                )
            del current[key]
        elif change["Action"] == "CREATE":
            if key in current:
                raise Route53ClientError(
                    "InvalidChangeBatch",
                    f"[Tried to create resource record set {described} but it already exists]",
                )
            current[key] = values
        else:
            current[key] = values


if __name__ == "__main__":
    sys.exit(main())
