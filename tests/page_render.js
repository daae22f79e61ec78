// Runs the review page's own rendering code (tweetgen/web/static/app.js) under Node, without a
// browser, on one tweet given as JSON, and prints what it built as JSON for tests/test_page_escaping.py.
//
//     node tests/page_render.js APP_JS TWEET_JSON
//
// The document here is the least a rendering function needs: elements keep their children and
// text, and `html` serialises them escaping text and attributes the way a browser does. Every
// way of turning a string into markup or code throws instead (innerHTML, outerHTML,
// insertAdjacentHTML, document.write, on* attributes, javascript: URLs, eval and new Function),
// so a page that rendered untrusted text through one of them fails here.
"use strict";
const fs = require("fs");
const vm = require("vm");

const [appPath, tweetJson] = process.argv.slice(2);
const created = [];

function refuse(what) {
  throw new Error(`the page used ${what}: untrusted text would be parsed as HTML or code`);
}

const escapeText = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const escapeAttribute = (s) => escapeText(s).replace(/"/g, "&quot;");

class Text {
  constructor(data) { this.data = String(data); }
  get textContent() { return this.data; }
  get html() { return escapeText(this.data); }
}

class Element {
  constructor(tag) {
    this.tagName = String(tag).toUpperCase();
    this.childNodes = [];
    this.attributes = new Map();
    this.dataset = {};
    this.style = {};
    this.listeners = {};
    const classes = new Set();
    this.classList = {
      add: (...names) => names.forEach((n) => classes.add(n)),
      remove: (...names) => names.forEach((n) => classes.delete(n)),
      toggle: (n, on) => ((on ?? !classes.has(n)) ? classes.add(n) : classes.delete(n), classes.has(n)),
      contains: (n) => classes.has(n),
    };
    created.push(this.tagName.toLowerCase());
  }
  get className() { return this.attributes.get("class") || ""; }
  set className(value) { this.attributes.set("class", String(value)); }
  get title() { return this.attributes.get("title") || ""; }
  set title(value) { this.attributes.set("title", String(value)); }
  get id() { return this.attributes.get("id") || ""; }
  set id(value) { this.attributes.set("id", String(value)); }
  set href(value) { this.setAttribute("href", value); }
  set src(value) { this.setAttribute("src", value); }
  get textContent() { return this.childNodes.map((c) => c.textContent).join(""); }
  set textContent(value) { this.childNodes = value === "" || value == null ? [] : [new Text(value)]; }
  get innerText() { return this.textContent; }
  set innerText(value) { this.textContent = value; }
  get children() { return this.childNodes.filter((c) => c instanceof Element); }
  get innerHTML() { return this.childNodes.map((c) => c.html).join(""); }
  set innerHTML(_value) { refuse("innerHTML"); }
  set outerHTML(_value) { refuse("outerHTML"); }
  insertAdjacentHTML() { refuse("insertAdjacentHTML"); }
  setHTMLUnsafe() { refuse("setHTMLUnsafe"); }
  get html() {
    const data = Object.entries(this.dataset).map(([k, v]) => [`data-${k}`, v]);
    const attributes = [...this.attributes, ...data].map(([k, v]) => ` ${k}="${escapeAttribute(String(v))}"`);
    const tag = this.tagName.toLowerCase();
    return `<${tag}${attributes.join("")}>${this.innerHTML}</${tag}>`;
  }
  setAttribute(name, value) {
    if (/^on/i.test(name)) refuse(`an ${name} attribute`);
    if (/^\s*javascript:/i.test(String(value))) refuse(`a javascript: URL in ${name}`);
    this.attributes.set(String(name).toLowerCase(), String(value));
  }
  getAttribute(name) { return this.attributes.has(name) ? this.attributes.get(name) : null; }
  removeAttribute(name) { this.attributes.delete(name); }
  append(...nodes) {
    for (const node of nodes) this.childNodes.push(node instanceof Element || node instanceof Text ? node : new Text(node));
  }
  prepend(...nodes) { const old = this.childNodes; this.childNodes = []; this.append(...nodes); this.childNodes.push(...old); }
  appendChild(node) { this.append(node); return node; }
  replaceChildren(...nodes) { this.childNodes = []; this.append(...nodes); }
  addEventListener(type, listener) { (this.listeners[type] ||= []).push(listener); }
  removeEventListener() {}
  querySelector() { return null; }
  querySelectorAll() { return []; }
  closest() { return null; }
  focus() {}
  blur() {}
  scrollIntoView() {}
}

const document = {
  createElement: (tag) => new Element(tag),
  createTextNode: (data) => new Text(data),
  getElementById: () => new Element("div"),
  querySelector: () => null,
  querySelectorAll: () => [],
  addEventListener() {},
  removeEventListener() {},
  write: () => refuse("document.write"),
  writeln: () => refuse("document.writeln"),
};
const context = vm.createContext(
  { document, console, localStorage: { getItem: () => null, setItem() {} }, setInterval() {}, setTimeout() {},
    URLSearchParams, DOMParser: class { constructor() { refuse("DOMParser"); } } },
  { codeGeneration: { strings: false, wasm: false } },  // eval, new Function, setTimeout("code")
);
vm.runInContext(fs.readFileSync(appPath, "utf8"), context, { filename: appPath });

const tweet = JSON.parse(tweetJson);
context.tweet = tweet;
const row = vm.runInContext("tweetRow(tweet)", context);
const item = vm.runInContext('element("li", "text", tweet.text)', context);
const cells = row.children.map((cell) => cell.textContent);
process.stdout.write(JSON.stringify({ html: row.html + item.html, cells, item: item.textContent,
                                      created: [...new Set(created)].sort() }));
