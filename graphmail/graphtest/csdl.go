package graphtest

import (
	"bytes"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"math"
	"strings"
	"time"
)

// The sendMail request body is checked against an excerpt of Microsoft Graph's own v1.0 schema
// (testdata/graph-v1.0-sendmail.csdl.xml, vendored from microsoftgraph/msgraph-metadata with its
// commit and MIT licence), not against a list we keep: a property Graph does not define, a value
// of the wrong JSON type or an enum value Graph does not know is answered 400 RequestBodyRead, as
// Graph's OData layer does.
//
//go:embed testdata/graph-v1.0-sendmail.csdl.xml
var sendMailCSDL []byte

// csdlSchema is the parsed excerpt: types by simple name, and the sendMail action's parameters.
type csdlSchema struct {
	types  map[string]*csdlType
	params []csdlProp // sendMail parameters after the binding parameter
}

type csdlType struct {
	kind     string // "enum", "complex", "entity"
	name     string // simple name, e.g. "message"
	base     string // simple name of the base type, "" if none
	abstract bool
	// open: OpenType="true" — OData accepts dynamic properties, not
	// declared in the model, on an instance of an open type (OData CSDL XML
	// 4.01 §6.3 "Open Entity Type"; the vendored CSDL marks message open).
	open    bool
	members map[string]string // enum: lower-case member name -> member name
	props   map[string]csdlProp
	lower   map[string]string // lower-case property name -> property name
}

type csdlProp struct {
	name       string
	typ        string // "Edm.String", or a simple graph type name
	collection bool
	nullable   bool
}

// schema is parsed once; the excerpt is part of the binary, so a parse failure is a build defect.
var schema = mustParseCSDL(sendMailCSDL)

func mustParseCSDL(b []byte) *csdlSchema {
	s, err := parseCSDL(b)
	if err != nil {
		panic("graphtest: vendored CSDL: " + err.Error())
	}
	return s
}

func parseCSDL(b []byte) (*csdlSchema, error) {
	type xProp struct {
		Name     string `xml:"Name,attr"`
		Type     string `xml:"Type,attr"`
		Nullable string `xml:"Nullable,attr"`
	}
	type xType struct {
		Name     string  `xml:"Name,attr"`
		BaseType string  `xml:"BaseType,attr"`
		Abstract string  `xml:"Abstract,attr"`
		OpenType string  `xml:"OpenType,attr"`
		Props    []xProp `xml:"Property"`
		Navs     []xProp `xml:"NavigationProperty"`
		Members  []xProp `xml:"Member"`
	}
	var doc struct {
		Schema struct {
			Enums    []xType `xml:"EnumType"`
			Complex  []xType `xml:"ComplexType"`
			Entities []xType `xml:"EntityType"`
			Actions  []struct {
				Name   string  `xml:"Name,attr"`
				Params []xProp `xml:"Parameter"`
			} `xml:"Action"`
		} `xml:"DataServices>Schema"`
	}
	if err := xml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	s := &csdlSchema{types: make(map[string]*csdlType)}
	prop := func(p xProp) csdlProp {
		t, coll := p.Type, false
		if inner, ok := strings.CutPrefix(t, "Collection("); ok {
			t, coll = strings.TrimSuffix(inner, ")"), true
		}
		return csdlProp{name: p.Name, typ: strings.TrimPrefix(t, "graph."), collection: coll, nullable: p.Nullable != "false"}
	}
	add := func(kind string, list []xType) {
		for _, x := range list {
			t := &csdlType{kind: kind, name: x.Name, base: strings.TrimPrefix(x.BaseType, "graph."),
				abstract: x.Abstract == "true", open: x.OpenType == "true", props: map[string]csdlProp{}, lower: map[string]string{}}
			if kind == "enum" {
				t.members = make(map[string]string, len(x.Members))
				for _, m := range x.Members {
					t.members[strings.ToLower(m.Name)] = m.Name
				}
			}
			for _, p := range append(x.Props, x.Navs...) {
				t.props[p.Name] = prop(p)
				t.lower[strings.ToLower(p.Name)] = p.Name
			}
			s.types[x.Name] = t
		}
	}
	add("enum", doc.Schema.Enums)
	add("complex", doc.Schema.Complex)
	add("entity", doc.Schema.Entities)
	for _, a := range doc.Schema.Actions {
		if a.Name != "sendMail" {
			continue
		}
		for i, p := range a.Params {
			if i > 0 { // the first is the binding parameter (the user)
				s.params = append(s.params, prop(p))
			}
		}
	}
	if len(s.params) == 0 || s.types["message"] == nil {
		return nil, fmt.Errorf("no sendMail action or message type")
	}
	return s, nil
}

// property finds name on t or its base types. Property names are matched case-insensitively:
// Microsoft's own samples send both "subject" and "Subject" (see README.md, "Sources").
func (s *csdlSchema) property(t *csdlType, name string) (csdlProp, bool) {
	for t != nil {
		if real, ok := t.lower[strings.ToLower(name)]; ok {
			return t.props[real], true
		}
		t = s.types[t.base]
	}
	return csdlProp{}, false
}

// isOpen reports whether t or a base type of it is open (a type derived
// from an open type is open too: OData CSDL 4.01 §6.3).
func (s *csdlSchema) isOpen(t *csdlType) bool {
	for ; t != nil; t = s.types[t.base] {
		if t.open {
			return true
		}
	}
	return false
}

// checkMessage validates a message resource (the body of POST /users/{id}/messages, the draft
// create) against the CSDL's message type, as checkSendMail validates its Message parameter.
func (s *csdlSchema) checkMessage(body []byte) *graphErr {
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	var top any
	if err := d.Decode(&top); err != nil {
		return bodyReadErr("Invalid JSON. " + err.Error())
	}
	if d.More() {
		return bodyReadErr("Invalid JSON. More than one value was found at the root of the JSON content.")
	}
	return s.checkValue(csdlProp{name: "message", typ: "message", nullable: false}, top, "message")
}

// derivesFrom reports whether t is want or derives from it.
func (s *csdlSchema) derivesFrom(t *csdlType, want string) bool {
	for ; t != nil; t = s.types[t.base] {
		if t.name == want {
			return true
		}
	}
	return false
}

// checkSendMail validates a sendMail request body against the action's parameters and the types
// they use. It returns nil or a 400 RequestBodyRead error worded as Graph's OData layer words it.
func (s *csdlSchema) checkSendMail(body []byte) *graphErr {
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	var top any
	if err := d.Decode(&top); err != nil {
		return bodyReadErr("Invalid JSON. " + err.Error())
	}
	if d.More() {
		return bodyReadErr("Invalid JSON. More than one value was found at the root of the JSON content.")
	}
	obj, ok := top.(map[string]any)
	if !ok {
		return bodyReadErr("An unexpected '" + nodeKind(top) + "' node was found when reading from the JSON reader. A 'StartObject' node was expected.")
	}
	for k, v := range obj {
		var p *csdlProp
		for i := range s.params {
			if strings.EqualFold(s.params[i].name, k) { // Graph's samples use "message", the CSDL "Message"
				p = &s.params[i]
			}
		}
		if p == nil {
			return bodyReadErr("The parameter '" + k + "' in the request payload is not a valid parameter for the operation 'sendMail'.")
		}
		if err := s.checkValue(*p, v, p.name); err != nil {
			return err
		}
	}
	return nil
}

func bodyReadErr(msg string) *graphErr {
	return &graphErr{status: 400, code: "RequestBodyRead", msg: msg}
}

func nodeKind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "StartObject"
	case []any:
		return "StartArray"
	}
	return "PrimitiveValue"
}

// checkValue validates v (decoded with UseNumber) as a value of property p; path names it in errors.
func (s *csdlSchema) checkValue(p csdlProp, v any, path string) *graphErr {
	if v == nil {
		if !p.nullable || p.collection {
			return bodyReadErr(fmt.Sprintf("A null value was found for the property named '%s', which has the expected type '%s[Nullable=False]'. The expected type '%s[Nullable=False]' does not allow null values.",
				p.name, qualified(p.typ), qualified(p.typ)))
		}
		return nil
	}
	if p.collection {
		arr, ok := v.([]any)
		if !ok {
			return bodyReadErr("An unexpected '" + nodeKind(v) + "' node was found for property named '" + p.name + "' when reading from the JSON reader. A 'StartArray' node was expected.")
		}
		one := p
		one.collection, one.nullable = false, false
		for i, e := range arr {
			if err := s.checkValue(one, e, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return nil
	}
	if strings.HasPrefix(p.typ, "Edm.") {
		return checkPrimitive(p, v)
	}
	t := s.types[p.typ]
	if t == nil {
		return bodyReadErr("graphtest: type '" + qualified(p.typ) + "' (property '" + path + "') is not in the vendored CSDL excerpt; add it there")
	}
	if t.kind == "enum" {
		str, ok := v.(string)
		if ok {
			// Graph accepts member names in any case: its own samples send "HTML" and "Text".
			if _, known := t.members[strings.ToLower(str)]; known {
				return nil
			}
		}
		return bodyReadErr(fmt.Sprintf("Cannot convert the literal '%v' to the expected type '%s'.", v, qualified(t.name)))
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return bodyReadErr("An unexpected '" + nodeKind(v) + "' node was found for property named '" + p.name + "' when reading from the JSON reader. A 'StartObject' node was expected.")
	}
	if raw, has := obj["@odata.type"]; has {
		name, _ := raw.(string)
		name = strings.TrimPrefix(strings.TrimPrefix(name, "#"), "microsoft.graph.")
		sub := s.types[name]
		if sub == nil || !s.derivesFrom(sub, t.name) {
			return bodyReadErr(fmt.Sprintf("A type named '%v' could not be resolved by the model. When a model is available, each type name must resolve to a valid type.", raw))
		}
		t = sub
	}
	if t.abstract {
		return bodyReadErr(fmt.Sprintf("The type '%s' of property '%s' is abstract: the value must name a concrete derived type in '@odata.type'.", qualified(t.name), path))
	}
	for k, pv := range obj {
		if k == "@odata.type" {
			continue
		}
		if strings.Contains(k, "@") {
			return bodyReadErr("The annotation '" + strings.TrimPrefix(k, "@") + "' was found. This annotation is either not recognized or not expected at the current position.")
		}
		sp, ok := s.property(t, k)
		if !ok && s.isOpen(t) {
			continue // a dynamic property of an open type: accepted as it is
		}
		if !ok {
			return bodyReadErr(fmt.Sprintf("The property '%s' does not exist on type '%s'. Make sure to only use property names that are defined by the type or mark the type as open type.", k, qualified(t.name)))
		}
		if err := s.checkValue(sp, pv, path+"."+sp.name); err != nil {
			return err
		}
	}
	return nil
}

func qualified(t string) string {
	if strings.HasPrefix(t, "Edm.") {
		return t
	}
	return "microsoft.graph." + t
}

// checkPrimitive validates an OData primitive in its JSON form (OData JSON Format 4.01, section 7.1).
func checkPrimitive(p csdlProp, v any) *graphErr {
	bad := func() *graphErr {
		lit := v
		if _, isStr := v.(string); !isStr {
			b, _ := json.Marshal(v)
			lit = string(b)
		}
		return bodyReadErr(fmt.Sprintf("Cannot convert the literal '%v' to the expected type '%s'.", lit, p.typ))
	}
	switch p.typ {
	case "Edm.String":
		if _, ok := v.(string); !ok {
			return bad()
		}
	case "Edm.Boolean":
		if _, ok := v.(bool); !ok {
			return bad()
		}
	case "Edm.Int32":
		n, ok := v.(json.Number)
		if !ok {
			return bad()
		}
		i, err := n.Int64()
		if err != nil || i < math.MinInt32 || i > math.MaxInt32 {
			return bad()
		}
	case "Edm.Binary":
		str, ok := v.(string)
		if !ok {
			return bad()
		}
		// OData's JSON format writes binary as base64url; Graph's own samples send standard base64.
		if _, err := base64.StdEncoding.DecodeString(str); err != nil {
			if _, err := base64.URLEncoding.DecodeString(str); err != nil {
				return bad()
			}
		}
	case "Edm.DateTimeOffset":
		str, ok := v.(string)
		if !ok {
			return bad()
		}
		if _, err := time.Parse(time.RFC3339, str); err != nil {
			return bad()
		}
	default:
		return bodyReadErr("graphtest: primitive type '" + p.typ + "' (property '" + p.name + "') is not checked by the fake; add it")
	}
	return nil
}
