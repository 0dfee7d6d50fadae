// Command kstatus prints the kstatus verdict (sigs.k8s.io/cli-utils/pkg/kstatus/status) for
// Kubernetes objects, so tests judge Amphorae with the very code Flux and kpt use.
//
// It reads `kubectl get -o json` output on stdin (one object or a List) and writes one JSON
// line per object: {"apiVersion", "kind", "namespace", "name", "status", "message"}.
// Numbers are decoded as integers, as the API server sends them; a float observedGeneration
// would make kstatus fail to read the object.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	Status     string `json:"status"`
	Message    string `json:"message"`
}

func objects(data []byte) ([]unstructured.Unstructured, error) {
	decoded, _, err := unstructured.UnstructuredJSONScheme.Decode(data, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("decoding input: %w", err)
	}
	switch obj := decoded.(type) {
	case *unstructured.UnstructuredList:
		return obj.Items, nil
	case *unstructured.Unstructured:
		return []unstructured.Unstructured{*obj}, nil
	default:
		return nil, fmt.Errorf("decoding input: unexpected %T", decoded)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	items, err := objects(data)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(out)
	defer w.Flush()
	encoder := json.NewEncoder(w)
	for i := range items {
		u := &items[i]
		result, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("%s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
		}
		if err := encoder.Encode(verdict{
			APIVersion: u.GetAPIVersion(),
			Kind:       u.GetKind(),
			Namespace:  u.GetNamespace(),
			Name:       u.GetName(),
			Status:     result.Status.String(),
			Message:    result.Message,
		}); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}
