"""Kubernetes API test double: an in-memory Kubernetes API server that the real `kubernetes`
client drives over real HTTP. It is a test double, not a cluster: no container ever runs.

No cluster can run where these tests run, so this is the one fake the suite allows (an edge
that cannot run here). `KubeApiDouble` serves, on a free 127.0.0.1 port (plain http):

- discovery: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/apps/v1`, `/apis/batch/v1`
  (what `kubernetes.dynamic.DynamicClient` reads; it never asks for /openapi/v2 nor for
  aggregated discovery);
- core/v1 namespaces (cluster-scoped; objects may be created in any namespace, created or
  not), pods (+ `/log`), services, configmaps, secrets, persistentvolumeclaims, events (list
  and get only, always empty); apps/v1 deployments, statefulsets, daemonsets; batch/v1 jobs;
- list (`labelSelector`: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`;
  `fieldSelector` equality on dotted paths), get, create (409 AlreadyExists), server-side
  apply (PATCH `application/apply-patch+yaml`, `fieldManager` required; labels and
  annotations merge, other named fields replace; no field-manager conflicts), merge patch
  (`merge-patch+json` and `strategic-merge-patch+json`, both RFC 7386), delete
  (`propagationPolicy` Background/Foreground/Orphan; the default is Orphan for Jobs, as on a
  real server), `dryRun`. Not served: PUT, watch, deletecollection, JSON patch.
- errors as Kubernetes `Status` objects with the matching HTTP code.

Controllers and the pretend node are simulated by a tick thread: see `controllers` and
`pods` for the exact rules (pods start `ready_after` seconds after creation; images from
`registry.invalid` never pull; `exit N` in a command crash-loops or fails a Job; `sleep N`
makes a Job run N seconds; an unknown nodeSelector leaves pods Unschedulable).

Tests get a `KubeTarget` from the `kube` fixture (tests/conftest.py): a kubeconfig, a fresh
namespace `flowq-test-<hex6>` and the double. With `FLOWQ_TEST_KUBECONFIG=<path>` the same
tests run against that real cluster (e.g. kind) instead: the namespace is created there and
deleted after, and `target.double` is None, so tests that inspect the double directly must
go through the API instead or be written for both.

`DynamicClient` caches discovery in `<tempdir>/osrcp-<md5(server url)>.json` unless given
`cache_file=`; `KubeTarget.dynamic(api)` puts it in the test's directory.
"""

from .resources import ResourceType
from .server import KubeApiDouble, KubeApiDoubleError, RecordedRequest
from .store import KubeStatusError
from .target import KubeTarget, kube_target

__all__ = [
    "KubeApiDouble",
    "KubeApiDoubleError",
    "KubeStatusError",
    "KubeTarget",
    "RecordedRequest",
    "ResourceType",
    "kube_target",
]
