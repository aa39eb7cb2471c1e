package xds

import (
	"bytes"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"
)

// YAML renders resources through protojson as block-style YAML. Field
// order is protojson's (declaration order); map keys are sorted.
func YAML(list []types.Resource) ([]byte, error) {
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	for _, r := range list {
		js, err := protojson.Marshal(r)
		if err != nil {
			return nil, err
		}
		var n yaml.Node
		if err := yaml.Unmarshal(js, &n); err != nil {
			return nil, err
		}
		plain(&n)
		seq.Content = append(seq.Content, n.Content[0])
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(seq); err != nil {
		return nil, err
	}
	return buf.Bytes(), enc.Close()
}

// plain drops JSON's flow and quoting styles so that yaml.v3 picks its own.
func plain(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		plain(c)
	}
}

// YAML renders everything a node receives, one document per type.
func (r *Resources) YAML() ([]byte, error) {
	var out bytes.Buffer
	for _, part := range []struct {
		name string
		list []types.Resource
	}{{"listeners", r.Listeners}, {"routes", r.Routes}, {"clusters", r.Clusters}, {"endpoints", r.Endpoints}} {
		data, err := YAML(part.list)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", part.name, err)
		}
		fmt.Fprintf(&out, "# %s\n", part.name)
		out.Write(data)
		out.WriteString("---\n")
	}
	return out.Bytes(), nil
}
