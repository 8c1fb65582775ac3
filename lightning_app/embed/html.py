"""A self-contained, offline map page: points on a canvas, hover for label and opening text.

Everything (data, script, style) is inline; the page loads nothing. The data is JSON with every
``/`` and ``<`` escaped, so no text can close the script element or read as a URL.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
html,body{margin:0;height:100%;font:13px sans-serif;background:#fff;color:#222;overflow:hidden}
#map{position:absolute;left:0;top:0;width:100%;height:100%;cursor:crosshair}
#head{position:absolute;left:8px;top:6px;background:rgba(255,255,255,.85);padding:4px 6px;max-width:60%}
#legend{position:absolute;right:8px;top:6px;background:rgba(255,255,255,.85);padding:4px 6px;max-height:90%;overflow:auto}
#legend span{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:5px}
#tip{position:absolute;display:none;max-width:360px;background:#fffff4;border:1px solid #999;padding:5px 7px;
pointer-events:none;box-shadow:1px 1px 4px rgba(0,0,0,.3);white-space:pre-wrap}
</style></head><body>
<canvas id="map"></canvas>
<div id="head"><b>__TITLE__</b><br>__NOTE__</div>
<div id="legend"></div><div id="tip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
(function(){
"use strict";
var D=JSON.parse(document.getElementById("data").textContent);
var n=D.x.length, canvas=document.getElementById("map"), ctx=canvas.getContext("2d");
var tip=document.getElementById("tip"), legend=document.getElementById("legend");
D.classes.forEach(function(name,i){var row=document.createElement("div"),dot=document.createElement("span");
 dot.style.background=D.colors[i];row.appendChild(dot);row.appendChild(document.createTextNode(name));legend.appendChild(row);});
var W,H,R=Math.max(1.2,Math.min(4,500/Math.sqrt(Math.max(n,1)))),px=new Float32Array(n),py=new Float32Array(n),G=64,grid;
function draw(){
 var dpr=window.devicePixelRatio||1;W=canvas.clientWidth;H=canvas.clientHeight;
 canvas.width=W*dpr;canvas.height=H*dpr;ctx.setTransform(dpr,0,0,dpr,0,0);ctx.clearRect(0,0,W,H);
 var m=20,s=Math.min(W,H)-2*m,ox=(W-s)/2,oy=(H-s)/2;grid=new Map();
 for(var i=0;i<n;i++){px[i]=ox+D.x[i]*s;py[i]=oy+(1-D.y[i])*s;
  var key=Math.floor(px[i]/W*G)*G+Math.floor(py[i]/H*G);if(!grid.has(key))grid.set(key,[]);grid.get(key).push(i);}
 ctx.globalAlpha=0.75;
 for(var j=0;j<n;j++){ctx.fillStyle=D.colors[D.c[j]];ctx.beginPath();ctx.arc(px[j],py[j],R,0,6.2832);ctx.fill();}
}
function nearest(x,y){
 var best=-1,bd=Math.max(6,R+3)*Math.max(6,R+3),gx=Math.floor(x/W*G),gy=Math.floor(y/H*G);
 for(var a=gx-1;a<=gx+1;a++)for(var b=gy-1;b<=gy+1;b++){var cell=grid.get(a*G+b);if(!cell)continue;
  for(var k=0;k<cell.length;k++){var i=cell[k],d=(px[i]-x)*(px[i]-x)+(py[i]-y)*(py[i]-y);if(d<bd){bd=d;best=i;}}}
 return best;
}
canvas.addEventListener("mousemove",function(e){
 var i=nearest(e.clientX,e.clientY);if(i<0){tip.style.display="none";return;}
 tip.textContent="";var b=document.createElement("b");b.textContent=D.classes[D.c[i]]+"  (row "+D.row[i]+")";
 tip.appendChild(b);tip.appendChild(document.createTextNode("\\n"+D.t[i]));tip.style.display="block";
 tip.style.left=Math.min(e.clientX+12,W-370)+"px";tip.style.top=Math.min(e.clientY+12,H-120)+"px";
});
canvas.addEventListener("mouseleave",function(){tip.style.display="none";});
window.addEventListener("resize",draw);draw();
})();
</script></body></html>
"""


def _json(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/").replace("<", "\\u003c")


def write_html(path: str | Path, xy: np.ndarray, rows: np.ndarray, codes: np.ndarray, classes: list[str],
               colors: list[str], texts: list[str], title: str, note: str = "") -> Path:
    """The page for points ``xy`` (N, 2) coloured by ``codes`` into ``classes``/``colors``; hovering a
    point shows its class, row and text (pass the opening characters, not whole documents)."""
    low, high = xy.min(0), xy.max(0)
    unit = (xy - low) / max(float((high - low).max()), 1e-12)
    data = {"x": np.round(unit[:, 0], 5).tolist(), "y": np.round(unit[:, 1], 5).tolist(),
            "c": codes.astype(int).tolist(), "row": rows.astype(int).tolist(), "t": texts,
            "classes": classes, "colors": colors}
    page = (PAGE.replace("__TITLE__", html.escape(title)).replace("__NOTE__", html.escape(note))
            .replace("__DATA__", _json(data)))
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)
