package podrequest

import (
	"context"
	"encoding/json"
	"sort"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// dockerAuth is one entry of a docker config's "auths".
type dockerAuth struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	Auth          string `json:"auth,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
}

// pullSecrets reads the pod's imagePullSecrets (kubernetes.io/dockerconfigjson or the legacy
// kubernetes.io/dockercfg). As kubelet does, a missing or unreadable one is a Warning Event,
// not a failure: the pull may still succeed anonymously. Credentials are never logged.
func (r *Resolver) pullSecrets(ctx context.Context, pod *corev1.Pod) []cellapi.RegistryAuth {
	var out []cellapi.RegistryAuth
	for _, ref := range pod.Spec.ImagePullSecrets {
		s, err := r.secret(ctx, pod.Namespace, ref.Name)
		if err != nil {
			r.warn(pod, ReasonFailedToRetrievePullSecret, "Unable to retrieve some image pull secrets (%s); attempting to pull the image may not succeed.", ref.Name)
			continue
		}
		auths, ok := parseDockerConfig(s)
		if !ok {
			r.warn(pod, ReasonFailedToRetrievePullSecret, "image pull secret %s is not a valid docker config; ignoring it", ref.Name)
			continue
		}
		out = append(out, auths...)
	}
	return out
}

func parseDockerConfig(s *corev1.Secret) ([]cellapi.RegistryAuth, bool) {
	var auths map[string]dockerAuth
	if b, ok := s.Data[corev1.DockerConfigJsonKey]; ok {
		var cfg struct {
			Auths map[string]dockerAuth `json:"auths"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			return nil, false
		}
		auths = cfg.Auths
	} else if b, ok := s.Data[corev1.DockerConfigKey]; ok {
		if err := json.Unmarshal(b, &auths); err != nil {
			return nil, false
		}
	} else {
		return nil, false
	}
	out := make([]cellapi.RegistryAuth, 0, len(auths))
	for reg, a := range auths {
		out = append(out, cellapi.RegistryAuth{Registry: reg, Username: a.Username, Password: a.Password, Auth: a.Auth, IdentityToken: a.IdentityToken})
	}
	sortAuths(out)
	return out, true
}

func sortAuths(a []cellapi.RegistryAuth) {
	sort.Slice(a, func(i, j int) bool { return a[i].Registry < a[j].Registry })
}
