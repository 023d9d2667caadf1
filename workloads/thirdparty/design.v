// Small synthesis input for the yosys third-party workload.
module counter #(parameter W = 16) (input clk, input rst, input en, output reg [W-1:0] q);
  always @(posedge clk)
    if (rst) q <= 0;
    else if (en) q <= q + 1'b1;
endmodule

module mac #(parameter W = 12) (input clk, input [W-1:0] a, input [W-1:0] b,
                                 output reg [2*W+3:0] acc);
  always @(posedge clk) acc <= acc + a * b;
endmodule

module top (input clk, input rst, input [11:0] a, input [11:0] b, input [15:0] x,
            output [15:0] c0, output [23:0] c1, output [27:0] m, output [16:0] s,
            output eq, output lt);
  counter #(.W(16)) u0 (.clk(clk), .rst(rst), .en(1'b1), .q(c0));
  counter #(.W(24)) u1 (.clk(clk), .rst(rst), .en(c0[3]), .q(c1));
  mac #(.W(12)) u2 (.clk(clk), .a(a), .b(b), .acc(m));
  assign s = x + {4'b0, a};
  assign eq = (x == c0);
  assign lt = (x < c0);
endmodule
