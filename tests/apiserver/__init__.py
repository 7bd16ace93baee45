"""A Kubernetes API server for tests, as strict as a real one (1.36) where our code can tell the difference.

kmock (tests/apiserver/server.py) parses requests, keeps the request log and lets a test put a reaction in front
of the server; everything behind it is modelled here, each part in a module of its own, each tested over HTTP in
tests/test_emulator.py and tests/test_emulator_apply.py and, for the pure parts, on its own in
tests/test_emulator_fields.py:

- a refused write (any reaction answering, a 409, a 422) changes nothing and sends no watch event; a write that
  changes nothing gets no new ``resourceVersion`` and sends no event (server.py, store.py);
- decoding (decoding.py): wrong types refused (400; a patch whose result does not decode, 422), unknown fields
  dropped, quantities canonical (quantity.py), what JSON's ``omitempty`` omits omitted, from Kubernetes 1.36's
  OpenAPI (schema.py); custom resources pruned, defaulted and validated against their CRD (tests/crd_rules.py);
- defaults of Deployments, pod templates, Pods, Services and Secrets, ``stringData`` merged into ``data``
  (defaults.py); validation of names, labels and the rules of those kinds our objects can break
  (validation.py);
- metadata: ``uid``, ``creationTimestamp``, ``generation`` moved as each kind's strategy moves it, one
  ``resourceVersion`` counter, optimistic concurrency (409), ``generateName``; finalizers hold a deletion;
  owners' deletion collects their dependents (at once);
- subresources (kinds.py): ``/status`` changes only status (for a built-in kind, what its status strategy lets
  through), the main resource never changes status, ``/scale`` speaks ``autoscaling/v1`` Scale (scale.py) and
  changes only ``spec.replicas``;
- lists and watches (watch.py): ``metadata.resourceVersion``, pages, label and field selectors, a watch resumed
  from a version gets only later events, 410 Gone past the kept history, ``timeoutSeconds``, BOOKMARKs;
- patches (patches.py): merge, strategic merge (list keys from the OpenAPI), JSON patch, and Server-Side Apply
  with ``managedFields`` (managed.py over fieldpath.py: structured-merge-diff's model: field sets, ownership,
  conflicts, ``force``, fields released and removed, associative lists merged by their keys).

What only a real API server shows (not modelled):

- admission (webhooks, ResourceQuota, LimitRange, PodSecurity, ServiceAccount), authentication and RBAC (a test
  that needs a 403 puts a reaction in front: tests/test_helm_rbac.py), namespaces that must exist, namespace
  deletion, the finalizers of Namespaces;
- controllers: no ReplicaSets or Pods come from a Deployment and no status is written for it (tests write
  status, tests/pod_fleet.py plays the ReplicaSet), garbage collection is immediate and only in the background
  mode (no ``foregroundDeletion``, no ``orphan``); Events are not aggregated or expired;
- validation beyond the rules listed in validation.py (e.g. most of a pod spec's), CEL ``oldSelf`` transition
  rules, validation ratcheting field by field (modelled by top-level field), field validation warnings (sent as
  headers);
- watches: the cache's timing (bookmarks every ``bookmark_interval``, a real server about every minute), the
  history kept by time (75 s or more) rather than by count, a watch from a future version (a real server waits
  and then answers 504), ``sendInitialEvents`` streaming lists, ``resourceVersionMatch``;
- Server-Side Apply: an apply's configuration is read with its quantities canonical before it is compared (a real
  server may compare the form it was given), the managed fields of other API versions (we have one per kind),
  ``managedFields`` sent by a client (ignored: the server's bookkeeping wins), ``kubectl``'s upgrade of
  client-side apply, the fields an apply to ``/scale`` owns being converted between Scale and the Deployment
  (here both are ``spec.replicas``);
- strategic merge patch directives beyond ``$patch`` (``$setElementOrder``, ``$retainKeys``,
  ``$deleteFromPrimitiveList``);
- which zero numbers and ``false`` a JSON omits beyond defaults.ZERO_IS_UNSET (a Go pointer is kept, a value
  field omitted: the OpenAPI does not say which is which), ``creationTimestamp: null`` in templates, protobuf.
"""
