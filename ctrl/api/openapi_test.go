package api

import (
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/roamnet/roam/ctrl"
)

// TestOpenAPIMatchesRoutes checks openapi.yaml documents exactly the routes
// the server registers.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	b, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("parse openapi.yaml: %v", err)
	}
	var documented []string
	for p, ops := range doc.Paths {
		for m := range ops {
			if m == "parameters" {
				continue
			}
			documented = append(documented, strings.ToUpper(m)+" "+p)
		}
	}
	s := newTestServer(t, "tok")
	routes := s.Routes()
	sort.Strings(documented)
	sort.Strings(routes)
	if strings.Join(documented, "\n") != strings.Join(routes, "\n") {
		t.Fatalf("openapi.yaml and the routes differ:\ndocumented:\n%s\nserved:\n%s", strings.Join(documented, "\n"), strings.Join(routes, "\n"))
	}
}

// TestOpenAPIMatchesTypes checks openapi.yaml's schemas of the messages
// name exactly the JSON fields of their Go types (third-party peers and
// clients read the document, not the code).
func TestOpenAPIMatchesTypes(t *testing.T) {
	b, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]any `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("parse openapi.yaml: %v", err)
	}
	for name, v := range map[string]any{
		"ForeignRequest": ctrl.ForeignRequest{},
		"ForeignReply":   ctrl.ForeignReply{},
		"MovedOn":        ctrl.MovedOn{},
		"Where":          ctrl.Where{},
		"Epoch":          ctrl.Epoch{},
		"Record":         ctrl.Record{},
		"Migration":      ctrl.Migration{},
		"MigrateRequest": ctrl.MigrateRequest{},
		"Descriptor":     ctrl.Descriptor{},
	} {
		var fields []string
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			tag, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			if tag != "" && tag != "-" {
				fields = append(fields, tag)
			}
		}
		var documented []string
		for p := range doc.Components.Schemas[name].Properties {
			documented = append(documented, p)
		}
		sort.Strings(fields)
		sort.Strings(documented)
		if strings.Join(fields, " ") != strings.Join(documented, " ") {
			t.Errorf("schema %s documents\n  %s\nthe Go type has\n  %s", name, strings.Join(documented, " "), strings.Join(fields, " "))
		}
	}
}
