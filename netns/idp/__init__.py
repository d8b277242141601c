"""The lab's identity providers (the `idp` host): an OpenID Connect provider
(npm `oidc-provider`, server.mjs here, its npm project next to it) and what
`gslb lab up` prepares for it (prepare.py). docs/identity.md, docs/lab.md."""
