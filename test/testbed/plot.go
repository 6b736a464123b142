package testbed

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Plot draws request latency over time (ms, log scale), failed requests
// as red crosses along the bottom, migrations as vertical lines and link
// events (shape, cut, restore) as dashed ones.
func Plot(r *Result, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: request latency at the home frontend %s", r.Service, r.Frontend)
	p.X.Label.Text = "time (s)"
	p.Y.Label.Text = "latency (ms)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	t0 := r.Started
	var ok, bad plotter.XYs
	maxY, minY := 1.0, math.Inf(1)
	for _, s := range r.Samples {
		x := s.Sent.Sub(t0).Seconds()
		y := float64(s.Latency.Microseconds()) / 1000
		if s.OK {
			y = math.Max(y, 0.01)
			ok = append(ok, plotter.XY{X: x, Y: y})
			maxY = math.Max(maxY, y)
			minY = math.Min(minY, y)
		} else {
			bad = append(bad, plotter.XY{X: x})
		}
	}
	if math.IsInf(minY, 1) {
		minY = 0.1
	}
	lo := minY / 2
	for i := range bad {
		bad[i].Y = lo
	}
	if len(ok) > 0 {
		s, err := plotter.NewScatter(ok)
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		s.GlyphStyle.Radius = vg.Points(1.2)
		s.GlyphStyle.Color = color.RGBA{B: 200, A: 255}
		p.Add(s)
		p.Legend.Add("request ok", s)
	}
	if len(bad) > 0 {
		s, err := plotter.NewScatter(bad)
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		s.GlyphStyle.Shape = draw.CrossGlyph{}
		s.GlyphStyle.Radius = vg.Points(2)
		s.GlyphStyle.Color = color.RGBA{R: 220, A: 255}
		p.Add(s)
		p.Legend.Add("request failed", s)
	}
	vline := func(x float64, c color.Color, dashed bool, label string) error {
		l, err := plotter.NewLine(plotter.XYs{{X: x, Y: lo}, {X: x, Y: maxY * 2}})
		if err != nil {
			return err
		}
		l.Color = c
		l.Width = vg.Points(1)
		if dashed {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(l)
		lbl, err := plotter.NewLabels(plotter.XYLabels{XYs: plotter.XYs{{X: x, Y: maxY * 1.5}}, Labels: []string{label}})
		if err != nil {
			return err
		}
		lbl.TextStyle[0].Font.Size = vg.Points(7)
		lbl.TextStyle[0].Color = c
		p.Add(lbl)
		return nil
	}
	for _, m := range r.Migrations {
		lbl := m.From + "→" + m.To
		if !m.Planned {
			lbl = "fail-safe " + lbl
		}
		if err := vline(m.End.Sub(t0).Seconds(), color.RGBA{G: 140, A: 255}, false, lbl); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
	}
	for _, e := range r.Events {
		c := color.Color(color.RGBA{R: 120, G: 120, B: 120, A: 255})
		if e.Kind == "cut" {
			c = color.RGBA{R: 200, A: 255}
		}
		if err := vline(e.Time.Sub(t0).Seconds(), c, true, e.Kind+" "+e.Cluster); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
	}
	p.Legend.Top = true
	if err := p.Save(24*vg.Centimeter, 12*vg.Centimeter, path); err != nil {
		return fmt.Errorf("save plot %s: %w", path, err)
	}
	return nil
}
